"""Is a generated dataset useful? Classification Accuracy Score: train on synthetic, test on real.

    python evaluate_cas.py --synthetic fairface-synthetic --dataset_name HuggingFaceM4/FairFace --output_dir cas
    python evaluate_cas.py --synthetic demo-synthetic --dataset_name demo-unseen \\
        --dataset_config_names 0.25 1.25 --output_dir cas-demo --device cpu

One small CNN (age, gender and race heads; utils/evaluation/cas.py) is trained from scratch on each of
(a) the synthetic dataset (generate_dataset.py's folder or Hub id; labels = the requested ones), (b) as many real
images from --train_split, (c) both together, with the same architecture, seed and number of steps, and tested on
the real images of --test_split. Honest only if the generator never saw --test_split: the generator's training
data is read from the dataset's record or card and its model's run record or card
(utils/evaluation/generator_data.py), and a test split it trained on is refused (--allow_test_on_training_data
runs it anyway). train_fairface.py merges train and validation by default: train the generator with
--dataset_splits train and test on validation (the default here).
Images are decoded once, at the classifier's resolution, into raw files in a temporary folder inside
--output_dir (N x resolution^2 x 3 bytes per set) and read back a batch at a time: memory does not grow with the
dataset (utils/evaluation/decoded_images.py; benchmarks/cas_memory.py).
Writes metrics.json and report.md (accuracy per attribute and per group, beside the real-data baseline).
"""

import argparse
import io
import json
import os
import tempfile

import numpy as np

from utils.cli import fail, first_line, positive_int
from utils.data.fairface import load_fairface
from utils.datasets.dataset_plan import read_record
from utils.evaluation.cas import cas_markdown, classification_accuracy_scores
from utils.evaluation.decoded_images import ConcatenatedImages, decode_rows
from utils.evaluation.generator_data import split_seen_by_generator
from utils.labels import ATTRIBUTES, check_dataset_labels
from utils.model.conditions import resolve_device_dtype

HONEST_TEST = ("for an honest score train the generator with train_fairface.py --dataset_splits train and test on "
               "validation, or test on real images it never saw (--dataset_name, --test_split); "
               "--allow_test_on_training_data runs it anyway")


def parse_args(input_args=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--synthetic", required=True, help="generate_dataset.py's --output_dir, or its Hub dataset id.")
    add("--dataset_name", default="HuggingFaceM4/FairFace", help="Real data: Hub id or local folder in its layout.")
    add("--dataset_config_names", nargs="+", default=["0.25"], help="Real configs (default: %(default)s; add 1.25 "
        "for a dataset generated with --framing tight wide).")
    add("--train_split", default="train", help="Real training images for (b) and (c) (default: %(default)s).")
    add("--test_split", default="validation", help="Real test images, unseen by the generator (default: "
        "%(default)s); a split the generator trained on is refused.")
    add("--allow_test_on_training_data", action="store_true", help="Test on --test_split even though the generator "
        "trained on it (a score of how well it learned its own training faces, not of unseen ones); recorded in "
        "metrics.json and report.md.")
    add("--resolution", type=positive_int, default=None, help="Image size (default: the synthetic images').")
    add("--train_steps", type=positive_int, default=None, help="Optimizer steps per classifier (default: 10 epochs "
        "of the synthetic set).")
    add("--batch_size", type=positive_int, default=64, help="Default: %(default)s.")
    add("--learning_rate", type=float, default=2e-3, help="Peak of the one-cycle schedule (default: %(default)s).")
    add("--max_test", type=positive_int, default=None, help="Test on a seeded subset of this many (default: all).")
    add("--seed", type=int, default=0, help="Seeds the real subset, the shuffles and the initialisation.")
    add("--device", default="cpu", help="cpu (default) or cuda.")
    add("--output_dir", default="cas", help="Where metrics.json and report.md go (default: %(default)s/).")
    args = parser.parse_args(input_args)
    if args.train_split == args.test_split:  # the real baseline (b) would be tested on its own training images
        parser.error(f"--train_split and --test_split are both {args.test_split!r}: the real-data classifier would be "
                     "scored on the images it trained on; give two splits")
    try:
        args.device = resolve_device_dtype(args.device)[0]
    except ValueError as error:
        fail(str(error), prog=parser.prog)
    return args


def check_test_split(args):
    """{"status", "detail"}: refuses (exit 2) a test split the generator trained on, unless allowed; warns when
    its training data cannot be known."""
    record = None
    if os.path.isdir(args.synthetic):
        try:
            record = read_record(args.synthetic)
        except (OSError, ValueError) as error:  # unreadable: no record to go by, said in the warning below
            print(f"warning: cannot read {args.synthetic}'s generate_dataset.py record: {first_line(error)}")
    status, detail = split_seen_by_generator(args.synthetic, record, args.dataset_name, args.test_split)
    if status == "seen" and not args.allow_test_on_training_data:
        fail(f"--test_split {args.test_split} of {args.dataset_name} is the generator's training data: {detail}; "
             + HONEST_TEST)
    if status == "seen":
        print(f"warning: testing on the generator's training data (--allow_test_on_training_data): {detail}")
    elif status == "unknown":
        print(f"warning: cannot tell whether the generator trained on --test_split {args.test_split}: {detail}; "
              "the score is honest only if it did not")
    else:
        print(f"--test_split {args.test_split} of {args.dataset_name} is unseen by the generator: {detail}")
    return {"status": status, "detail": detail}


def decode(dataset, rows, resolution, path, what):
    """(images read back from ``path``, {attribute: labels}) of the usable records among ``rows``; none is an error
    (a classifier cannot train or be tested on nothing)."""
    try:
        images, kept = decode_rows(dataset, rows, resolution, path)
    except OSError as error:
        fail(f"cannot write decoded images to {os.path.dirname(path)}: {error.strerror or error}")
    if not len(images):
        fail(f"no usable {what} image: {len(rows)} record(s), none decodes")
    return images, {a: np.asarray(dataset[a])[rows][kept] for a in ATTRIBUTES}


def main(args):
    import datasets
    import pyarrow

    test_check = check_test_split(args)
    rng = np.random.default_rng(args.seed)
    try:
        synthetic = datasets.load_dataset(args.synthetic, split="train")
        synthetic = synthetic.cast_column("image", datasets.Image(decode=False))
        check_dataset_labels(synthetic.features)
        real_train = load_fairface(args.dataset_name, args.dataset_config_names, [args.train_split])
        real_test = load_fairface(args.dataset_name, args.dataset_config_names, [args.test_split])
    except (ValueError, OSError, datasets.exceptions.DatasetNotFoundError) as error:
        fail(f"cannot load the data: {first_line(error)}")
    # A first load converts the files into datasets' Arrow cache through pyarrow's allocator, which keeps what it
    # freed for reuse (76 MB more for 10x the data, benchmarks/cas_memory.py): handed back before the long part.
    pyarrow.default_memory_pool().release_unused()
    if not len(synthetic):
        fail(f"{args.synthetic} holds no images")
    if args.resolution is None:  # the synthetic images' own size
        from PIL import Image

        first = synthetic[0]["image"]
        try:
            args.resolution = min(Image.open(io.BytesIO(first["bytes"]) if first["bytes"] else first["path"]).size)
        except (OSError, TypeError) as error:  # PIL's UnidentifiedImageError is an OSError; no bytes nor path
            fail(f"cannot read the size of {args.synthetic}'s first image ({first_line(error)}); give --resolution")
    resolution = args.resolution
    try:
        os.makedirs(args.output_dir, exist_ok=True)
        work = tempfile.TemporaryDirectory(prefix=".decoded-images-", dir=args.output_dir)
    except OSError as error:
        fail(f"cannot write to {args.output_dir}: {error.strerror or error}")
    with work:
        path = os.path.join(work.name, "{}.uint8").format
        synthetic_images, synthetic_labels = decode(synthetic, np.arange(len(synthetic)), resolution,
                                                    path("synthetic"), f"synthetic ({args.synthetic})")
        if len(real_train) < len(synthetic_images):
            print(f"warning: only {len(real_train)} real training images for {len(synthetic_images)} synthetic ones")
        chosen = np.sort(rng.choice(len(real_train), size=min(len(real_train), len(synthetic_images)),
                                    replace=False))
        real_images, real_labels = decode(real_train, chosen, resolution, path("real"),
                                          f"real training ({args.train_split})")
        test_rows = np.arange(len(real_test)) if not args.max_test or args.max_test >= len(real_test) else \
            np.sort(rng.choice(len(real_test), size=args.max_test, replace=False))
        test_images, test_labels = decode(real_test, test_rows, resolution, path("test"),
                                          f"real test ({args.test_split})")
        steps = args.train_steps or max(1, 10 * len(synthetic_images) // args.batch_size)
        print(f"{len(synthetic_images)} synthetic, {len(real_images)} real training images; {len(test_images)} real "
              f"test images ({args.test_split}); {steps} steps each at {resolution} px")

        both = {a: np.concatenate([synthetic_labels[a], real_labels[a]]) for a in ATTRIBUTES}
        training_sets = {"synthetic": (synthetic_images, synthetic_labels), "real": (real_images, real_labels),
                         "real+synthetic": (ConcatenatedImages(synthetic_images, real_images), both)}
        results = classification_accuracy_scores(training_sets, test_images, test_labels, steps,
                                                 batch_size=args.batch_size, learning_rate=args.learning_rate,
                                                 seed=args.seed, device=args.device)
        counts = {"synthetic": len(synthetic_images), "real": len(real_images), "test": len(test_images)}
        for images in (synthetic_images, real_images, test_images):
            images.close()
    settings = {k: str(v) if k == "device" else v for k, v in vars(args).items()}
    metrics = {"settings": {**settings, "resolution": resolution, "train_steps": steps}, "counts": counts,
               "test_split_check": test_check, "cas": results}
    with open(os.path.join(args.output_dir, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=1)
    caption = (f"Classification Accuracy Score: a small CNN trained for {steps} steps on each set "
               f"({counts['synthetic']} synthetic / {counts['real']} real images), tested on {counts['test']} "
               f"real {args.test_split} images of `{args.dataset_name}`.")
    caption += {"seen": " **Not a test on unseen faces**: the generator trained on these images "
                        f"(`--allow_test_on_training_data`; {test_check['detail']}).",
                "unknown": f" Whether the generator saw these images is unknown ({test_check['detail']}).",
                "unseen": ""}[test_check["status"]]
    with open(os.path.join(args.output_dir, "report.md"), "w") as f:
        f.write("# Classification Accuracy Score\n\n" + cas_markdown(results, caption))
    print(f"wrote {args.output_dir}/report.md and metrics.json")
    return metrics


if __name__ == "__main__":
    main(parse_args())
