"""The dataset card (README.md with the Hub's dataset-card YAML) of a generated dataset, and its provenance.

The YAML carries license, task_categories, tags (synthetic), source_datasets (the data the model was trained
on, as its model card says: none for demo data), annotations_creators (machine-generated), size_categories,
``configs`` (data/train-*) and ``dataset_info`` (the features with their ClassLabel names, the split sizes). The
text says where the images came from (model, the SHA-256 of its weight files as ``sha256sum`` prints them, its
training data, sampler settings, dtype and devices, seed scheme, the exact command), the counts per age, gender,
race and framing read back from the shards, what the labels mean, the verification rates per group, uses,
biases and the licence (FairFace's attribution, or MIT for a demo model's faces). No local path, whatever form
the command gave it in. The card has no timestamps: the same dataset gives the same card, byte for byte.
"""

import glob
import hashlib
import os

import numpy as np
import yaml
from huggingface_hub import ModelCard

from ..files.atomic_files import update_digest, write_file_atomic
from ..hub.student_card import teacher_folder
from ..labels import AGES, ATTRIBUTES, FRAMINGS, GENDERS, RACES
from ..model.pipeline import PIPELINE_FILES

FAIRFACE = "HuggingFaceM4/FairFace"


def model_provenance(model, dataset_name):
    """(weight files {path in the model: SHA-256 hex}, Hub commit or None, ``training_data``) of ``model``, a folder
    or a Hub id, read from the files that load (a pending release's, or the Hub snapshot with its card)."""
    folder, revision = teacher_folder(model)
    return weight_files_sha256(folder), revision, training_data(folder, dataset_name)


def weight_files_sha256(folder):
    """{path: SHA-256 hex} of the weight files ``load_pipeline`` reads in ``folder`` (the UNet's and the condition
    encoder's safetensors), as ``sha256sum`` prints them: anyone can check them. Not of the tensors as loaded,
    which change with --dtype and say nothing a user can compare."""
    files = {}
    for pattern in [p for p in PIPELINE_FILES if p.endswith(".safetensors")]:
        for path in sorted(glob.glob(os.path.join(folder, pattern))):
            files[os.path.relpath(path, folder).replace(os.sep, "/")] = update_digest(hashlib.sha256(), path).hexdigest()
    return files


def training_data(folder, dataset_name):
    """What the model in ``folder`` was trained on, from its model card's YAML (utils/hub/model_card.py: the
    ``synthetic-data`` tag for demo data, ``datasets`` for Hub data): {"synthetic": bool, "sources": [Hub dataset
    ids], "text": a phrase without local paths}. A model without a (readable) card: --dataset_name (its help: the
    model's training data)."""
    try:
        path = os.path.join(folder, "README.md")
        card = ModelCard.load(path).data if os.path.isfile(path) else None
    except (OSError, ValueError, yaml.YAMLError):  # a card that is no card: as none
        card = None
    if card is not None and "synthetic-data" in (card.tags or []):
        return {"synthetic": True, "sources": [], "text": "synthetic demo data (faces drawn procedurally by "
                "`utils/data/demo_data.py`, no photographs of people; FairFace's label names only)"}
    if card is not None:
        sources = list(card.datasets or [])
        return {"synthetic": False, "sources": sources, "text": ", ".join(f"`{s}`" for s in sources) or
                "a local dataset that is not on the Hub (the model card names none)"}
    return {"synthetic": False, "sources": [] if os.path.isdir(dataset_name) else [dataset_name],
            "text": f"`{public_name(dataset_name)}` (as `--dataset_name` says: the model has no card)"}


def size_category(n):
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < limit:
            return name
    return "1M<n<10M"


def _table(title, rows, header):
    lines = [f"| {title} | " + " | ".join(header) + " |", "|---|" + "---:|" * len(header)]
    return "\n".join(lines + [f"| {name} | " + " | ".join(map(str, values)) + " |" for name, values in rows])


def counts_tables(labels, verify):
    """Markdown: count per age, gender, race (and framing) group; with --verify also the share recognised on the
    first image, the share verified in the end and the mean images drawn per row."""
    out = []
    groups = list(ATTRIBUTES.items()) + ([("framing", FRAMINGS)] if "framing" in labels else [])
    for attribute, names in groups:
        rows = []
        for value, name in enumerate(names):
            mask = labels[attribute] == value
            row = [int(mask.sum())]
            if verify:
                first = (labels["attempts"][mask] == 1) & labels["verified"][mask]
                row += [_percent(first), _percent(labels["verified"][mask]),
                        f"{labels['attempts'][mask].mean():.2f}" if mask.any() else "-"]
            rows.append((name, row))
        header = ["images"] + (["accepted first try", "verified", "images drawn per row"] if verify else [])
        out.append(_table(attribute, rows, header))
    return "\n\n".join(out)


def _percent(values):
    return f"{100 * np.mean(values):.1f} %" if len(values) else "-"


def write_preview(output_dir, paths, count=6):
    """preview.png: ``count`` rows spread over the dataset, each captioned with its labels and seed."""
    import io

    import pyarrow.parquet as pq
    from PIL import Image

    from ..grid import labelled_grid

    rows = []
    for path in [paths[round(k * (len(paths) - 1) / max(1, count - 1))] for k in range(count)]:
        table = pq.read_table(path).to_pylist()
        rows.append(table[len(rows) * 7 % len(table)])
    images = [Image.open(io.BytesIO(row["image"]["bytes"])) for row in rows]
    labels = [f"{AGES[r['age']]}, {GENDERS[r['gender']]}, {RACES[r['race']]}"
              + (f", {FRAMINGS[r['framing']]}" if "framing" in r else "") + f"; seed {r['seed']}"
              + ("" if "verified" in r and not r["verified"] else " (verified)" * ("verified" in r)) for r in rows]
    grid = labelled_grid(images, 1, len(images), col_labels=labels)
    write_file_atomic(os.path.join(output_dir, "preview.png"), lambda f: grid.save(f, format="PNG"), mode="wb")


def memorisation_paragraph(labels, near_copies):
    """The card's sentence on near copies of training images (--check_memorisation), from the shards' columns."""
    if near_copies is None:
        return "Not checked for near copies of training images (generated without `--check_memorisation`)."
    flagged, features = labels["near_copy"], near_copies.extractor.model_id
    features = os.path.basename(os.path.normpath(features)) if os.path.isdir(features) else features  # no local paths
    percentile = f"{near_copies.percentile:g} %"
    return (f"{_percent(flagged)} of the images ({int(flagged.sum())}) are flagged `near_copy`: closer to their "
            f"nearest training image (cosine distance {near_copies.threshold:.4f} in `{features}` space) than "
            f"{percentile} of real images the model did not see ({near_copies.reference_kind}). A model that draws "
            f"new faces flags about {percentile}; look at flagged rows (or drop them) before publishing.")


def public_name(value):
    """A local file or folder (or any absolute path) by its name only, as the card may be pushed; else as given."""
    if value and (os.path.exists(value) or os.path.isabs(value)):
        return os.path.basename(os.path.normpath(value))
    return value


def public_command(argv):
    """generate_dataset.py's command as run, every local file or folder (model, output, training data, feature
    model, classifiers, weights file) by its name only, given as ``--flag PATH`` or ``--flag=PATH``: the card
    holds no local paths."""
    import shlex

    def public(arg):
        flag, equals, value = arg.partition("=") if arg.startswith("--") and "=" in arg else ("", "", arg)
        return flag + equals + public_name(value)

    return "generate_dataset.py " + shlex.join(public(a) for a in argv)


def write_card(output_dir, paths, plan, args, settings, record, command, near_copies=None, trained_on=None):
    """Write OUTPUT_DIR/README.md atomically; the counts come from the shards themselves. ``near_copies``: the
    NearCopyCheck of --check_memorisation (its threshold and reference); ``trained_on``: ``training_data``'s answer
    (default: FairFace); ``record``: the folder's record (weight files, devices, dtype)."""
    import datasets
    from huggingface_hub import DatasetCard, DatasetCardData

    from .dataset_shards import MEMORISATION_COLUMNS, VERIFY_COLUMNS, features, read_labels

    memorisation = near_copies is not None
    shard_features = features(framing=bool(args.framing), verify=args.verify, memorisation=memorisation)
    columns = [*ATTRIBUTES, *(["framing"] if args.framing else []), *(VERIFY_COLUMNS if args.verify else []),
               *(MEMORISATION_COLUMNS if memorisation else [])]
    labels = read_labels(paths, columns)
    num_rows = len(labels["age"])
    splits = datasets.SplitDict()
    num_bytes = sum(os.path.getsize(p) for p in paths)
    splits.add(datasets.SplitInfo(name="train", num_examples=num_rows, num_bytes=num_bytes))
    info = datasets.DatasetInfo(features=shard_features, splits=splits)
    trained_on = trained_on or {"synthetic": False, "sources": [FAIRFACE], "text": f"`{FAIRFACE}`"}
    card_data = DatasetCardData(  # a demo model's data: MIT, as its model card (no FairFace image in it)
        license="mit" if trained_on["synthetic"] else "cc-by-4.0", task_categories=["image-classification"],
        tags=["synthetic", "faces", "fairface", "diffusers"],
        source_datasets=trained_on["sources"] or None, annotations_creators=["machine-generated"],
        size_categories=[size_category(num_rows)],
        pretty_name=f"Synthetic FairFace-labelled faces ({os.path.basename(os.path.normpath(output_dir))})",
        configs=[{"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*"}]}])
    datasets.info.DatasetInfosDict({"default": info}).to_dataset_card_data(card_data)
    model = public_name(args.model)
    interval = settings["guidance_interval"]
    framing_column = ", `framing` (tight = FairFace's 0.25 crops, wide = 1.25)" if args.framing else ""
    verify_columns = ("; `p_age`, `p_gender`, `p_race`: the attribute classifier's probability of the requested "
                      f"label; `verified`: the requested labels of {', '.join(args.verify_attributes)} are its top "
                      "labels; `attempts`: images drawn for this row") if args.verify else ""
    verify_columns += ("; `nearest_train_distance`: cosine distance to the nearest training image; `near_copy`: "
                       "closer than the memorisation threshold" if memorisation else "")
    replaced = (f" an image replaced by `--keep verified` takes attempt r from seed {args.seed} + r x {num_rows} + i;"
                if args.keep == "verified" else "")
    classifiers = (f"classifier `{public_name(args.classifier)}`" + "".join(
        f", {a} `{public_name(getattr(args, a + '_classifier'))}`" for a in ATTRIBUTES
        if getattr(args, a + "_classifier")) if args.verify else "none")
    guided = f"on timesteps {interval[0]:g}-{interval[1]:g}" if interval else "on every step"
    devices = " and ".join(record["devices"]) + " (they differ in float rounding only)" * (len(record["devices"]) > 1)
    revision, download = "", ""
    if record.get("model_revision"):  # a Hub model: its commit, and how to fetch the files to check
        revision = f" (Hub commit `{record['model_revision']}`)"
        download = (f" (fetched with `hf download {model} --revision {record['model_revision']} --local-dir "
                    f"{model.split('/')[-1]}`; the Hub also shows each file's SHA256)")
    weight_files = "\n".join(f"{digest}  {name}" for name, digest in record["model_files"].items())
    verified = (f"{_percent(labels['verified'])} of the images are recognised as the requested "
                f"{', '.join(args.verify_attributes)} "
                f"({_percent((labels['attempts'] == 1) & labels['verified'])} on the first image)." if args.verify else
                "Not verified (generated without `--verify`).")
    text = f"""---
{card_data.to_yaml()}
---

# Synthetic faces with FairFace labels

{num_rows:,} **synthetic** face images, each drawn by the diffusion model `{model}` for a requested age group,
gender and race (FairFace's label set). No image shows a real person; none is a FairFace photograph.

```python
from datasets import load_dataset
ds = load_dataset("REPO_OR_FOLDER", split="train")   # this repo id, or the local folder
ds.features["race"].int2str(ds[0]["race"])
```

![A few rows with their labels](preview.png)

## Columns

`image`; `age`, `gender`, `race`: ClassLabels with FairFace's names in `{FAIRFACE}`'s order, so the columns line
up with it{framing_column}; `condition_id` (age*14 + gender*7 + race); `seed` (the image's own
seed){verify_columns}.

**The labels are the requested ones, not perceived ones**: they say what the model was asked to draw. {verified}

{memorisation_paragraph(labels, near_copies)}

## Counts

{counts_tables(labels, args.verify)}

## Provenance

- Model: `{model}`{revision}, trained on {trained_on["text"]}.
- Weights: the model's weight files below, SHA-256 as `sha256sum` prints it. To check a copy of the model, save
  the lines as `weights.sha256` in its folder and run `sha256sum -c weights.sha256` there{download}.
- Sampler: {record["scheduler"]}, {settings["num_inference_steps"]} steps, guidance scale {settings["guidance_scale"]:g}
  {guided}, dtype {record["dtype"]}, drawn on {devices}.
- Conditions: {len(args.condition_ids)}, distribution `{os.path.basename(args.distribution)}`.
- Seeds: image i of the dataset (shard order) is drawn from seed {args.seed} + i with its own generator (EDM's
  scheme), so the dataset does not depend on the number of processes;{replaced} `seed` holds the seed used.
- Verification: {classifiers}.
- Command: `{command}`

```text
{weight_files}
```

## Uses

Intended: training and auditing face-attribute classifiers with a known, controlled demographic distribution;
measuring per-group behaviour (check the Classification Accuracy Score with `evaluate_cas.py` first: a
classifier trained on these images may serve some groups worse than real data does). Out of scope: identifying or
verifying people, inferring anyone's real age, gender or race, and any use presenting these faces as real.

## Biases and limitations

{_biases_and_license(trained_on)}
"""
    DatasetCard(text)  # parses the YAML, or raises
    write_preview(output_dir, paths)
    write_file_atomic(os.path.join(output_dir, "README.md"), lambda f: f.write(text))


def _biases_and_license(trained_on):
    """The card's last two sections: what the model learned from, and the licence that follows from it."""
    if trained_on["synthetic"]:
        return """The model learned from synthetic demo faces whose look per label is made up by
`utils/data/demo_data.py`: these images say nothing about real faces or real groups. The model adds its own
errors: it draws some groups less faithfully than others (see the verification rates above). A balanced count is
not a balanced quality.

## License

MIT, as the model: it was trained only on synthetic images drawn by the MIT-licensed fairface-diffusion code. No
FairFace image was used, only FairFace's label names (Kärkkäinen, K., & Joo, J. (2021). FairFace: Face Attribute
Dataset for Balanced Race, Gender, and Age for Bias Measurement and Mitigation. WACV 2021)."""
    return f"""The model learned from {trained_on["text"]}. FairFace's labels are perceived (by annotators), binary for
gender and coarse for race and age; FairFace is balanced by race but skewed in age. The model adds its own errors:
it draws some groups less faithfully than others (see the verification rates above). A balanced count is not a
balanced quality.

## License and attribution

CC BY 4.0, as FairFace: Kärkkäinen, K., & Joo, J. (2021). FairFace: Face Attribute Dataset for Balanced Race,
Gender, and Age for Bias Measurement and Mitigation. WACV 2021. The images are synthetic, generated by a model
trained on FairFace-labelled data."""
