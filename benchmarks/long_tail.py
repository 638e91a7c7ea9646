"""Rare groups: does a model trained on FairFace's long-tailed frequencies draw its rarest age groups as well as its
commonest, which balancing fixes that, and does its balanced synthetic data lift a classifier's rarest groups?

Data: the long-tailed demo data (train_fairface.py --demo --demo_distribution fairface: 16,128 procedural faces at
FairFace's frequencies, 156 over 70 and 4,760 in their twenties) and, as the real images no model saw, a uniform
demo set drawn with another seed (every condition equally often).

1. Generators. Each --recipes entry trains the demo model on the long-tailed data for the same budget (the demo's
   1008 steps, batch 32), samples --seeds images of each of the 126 conditions with the model's default sampler
   (seed 1000 + k) and reads age, gender and race back from the pixels (utils.data.demo_data.measure_attributes).
   Per age group: its share of the training images and its all-three fidelity; the worst age group's gap to the
   mean of the nine. Rarest (70+) beside commonest (20-29): the near-copy rate (share of generated images whose
   nearest training image is closer than the 5th percentile of the unseen real images' nearest-training
   distances of that age group: 5 % expected of a model that copies nothing) and the diversity (mean pairwise
   cosine distance within a condition, the evaluation's measure), both in pixel space minus the training mean.
2. Classifier. The evaluation's CAS network (utils/evaluation/cas.py) trained for --cas_steps on (a) the
   long-tailed real images, (b) the same plus a balanced synthetic set (--synthetic_per_condition images of every
   condition from each generator), tested on the unseen balanced real images: age recall per group, the three
   rarest age groups' mean (70+, 0-2, 60-69: FairFace's fewest), the worst group and the overall mean, over
   --cas_seeds seeds (mean +- standard deviation).

    python benchmarks/long_tail.py                      # every recipe at 1008 steps: hours on 2 CPU cores
    python benchmarks/long_tail.py --max_train_steps 504 --recipes none "sampling by age, sqrt" \
        "sampling by age, full" "loss by age, full"     # docs/long_tail.md: 50 min with the trainings reused
    python benchmarks/long_tail.py --recipes none "sampling by age, sqrt" --work_dir lt   # keep runs for a rerun
"""

import argparse
import os
import re
import subprocess
import sys
import time

import numpy as np

from common import REPO, machine_lines, markdown_table, run_in_work_folder

RECIPES = {  # name -> train_fairface.py flags (on top of --demo --demo_distribution fairface)
    "none": [],
    "sampling by age, sqrt": ["--balance_by", "age", "--balance_power", "0.5"],
    "sampling by age, full": ["--balance_by", "age", "--balance_power", "1"],
    "sampling by condition, sqrt": ["--balance_by", "condition", "--balance_power", "0.5"],
    "loss by age, full": ["--balance_by", "age", "--balance_power", "1", "--balance_with", "loss"],
}
RAREST_AGES = ("more than 70", "0-2", "60-69")  # FairFace's three smallest age groups (842, 1792, 2779 faces)
COMMONEST_AGE = "20-29"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipes", nargs="+", choices=list(RECIPES), default=list(RECIPES))
    parser.add_argument("--max_train_steps", type=int, default=1008, help="Training budget (the demo's 1008 steps).")
    parser.add_argument("--seeds", type=int, default=4, help="Images per condition for fidelity (4: 56 per age group).")
    parser.add_argument("--heldout_images", type=int, default=2016, help="Unseen uniform real faces (CAS test set, "
                        "near-copy reference).")
    parser.add_argument("--synthetic_per_condition", type=int, default=16, help="Balanced synthetic set for CAS (b).")
    parser.add_argument("--cas_steps", type=int, default=300, help="Classifier training steps (batch 64).")
    parser.add_argument("--cas_seeds", type=int, default=3, help="Classifier seeds per training set.")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--work_dir", default=None, help="Keep data and runs here (default: a temporary folder).")
    parser.add_argument("--device", default="cpu")
    return parser.parse_args(argv)


def train(recipe, work, args):
    """Train one recipe (or reuse its finished run in --work_dir); returns (folder, seconds)."""
    output = os.path.join(work, re.sub(r"[^a-z0-9]+", "_", recipe.lower()).strip("_") + f"_{args.max_train_steps}")
    if os.path.isfile(os.path.join(output, "model_index.json")):
        return output, float("nan")
    command = [sys.executable, os.path.join(REPO, "train_fairface.py"), "--demo", "--demo_distribution", "fairface",
               "--dataset_name", os.path.join(work, "long-tailed"), "--preprocess_cache", os.path.join(work, "cache"),
               "--output_dir", output, "--max_train_steps", str(args.max_train_steps), "--report_to", "none",
               "--save_model_epochs", "1000", "--save_images_epochs", "1000", *RECIPES[recipe]]
    start = time.perf_counter()
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
    if result.returncode:
        sys.exit(f"training {recipe} failed:\n{result.stderr[-3000:]}")
    return output, time.perf_counter() - start


def real_images(folder, resolution):
    """Decoded images (N, H, W, 3) uint8 and their attributes (N, 3) of every config and split of a demo folder."""
    from utils.data.fairface import decode_image, load_fairface

    dataset = load_fairface(folder)
    images = np.stack([decode_image(record, resolution) for record in dataset["image"]])
    return images, np.stack([np.asarray(dataset[a]) for a in ("age", "gender", "race")], axis=1)


def pixel_features(images, mean):
    return images.reshape(len(images), -1).astype(np.float64) / 255.0 - mean


def sample(model, conditions, seeds, args):
    import torch

    from utils.model.pipeline import generate, load_pipeline

    torch.set_num_threads(args.threads)
    pipe = load_pipeline(model, device=args.device)
    pipe.set_progress_bar_config(disable=True)
    return np.stack([np.asarray(image) for image in generate(pipe, conditions, seeds, batch_size=126)])


def evaluate(model, train_set, heldout, args):
    """Per age group fidelity, the worst gap, near-copy rate and diversity of the rarest and commonest group."""
    from utils import evaluation as ev
    from utils.data.demo_data import attribute_hits
    from utils.evaluation.memorisation import memorisation_threshold
    from utils.labels import AGES, NUM_CONDITIONS, decode_condition

    conditions = [decode_condition(c) for c in range(NUM_CONDITIONS) for _ in range(args.seeds)]
    images = sample(model, conditions, [1000 + k for _ in range(NUM_CONDITIONS) for k in range(args.seeds)], args)
    requested = np.asarray(conditions)
    hits = attribute_hits(images, conditions)["all"]
    by_age = {name: float(hits[requested[:, 0] == a].mean()) for a, name in enumerate(AGES)}
    mean = float(np.mean(list(by_age.values())))
    worst = min(by_age, key=by_age.get)
    (train_images, _), (held_images, held_attributes) = train_set, heldout
    centre = train_images.reshape(len(train_images), -1).astype(np.float64).mean(0) / 255.0
    pool = pixel_features(train_images, centre)
    generated = pixel_features(images, centre)
    distance, _ = ev.nearest_neighbours(generated, pool)
    held_distance, _ = ev.nearest_neighbours(pixel_features(held_images, centre), pool)
    condition_ids = requested[:, 0] * 14 + requested[:, 1] * 7 + requested[:, 2]
    diversity = ev.diversity_by_condition(generated, condition_ids)
    held_ids = held_attributes[:, 0] * 14 + held_attributes[:, 1] * 7 + held_attributes[:, 2]
    real_diversity = ev.diversity_by_condition(pixel_features(held_images, centre), held_ids)
    groups = {}
    for name in (RAREST_AGES[0], COMMONEST_AGE):
        a = AGES.index(name)
        threshold = memorisation_threshold(held_distance[held_attributes[:, 0] == a], 5.0)
        mine = requested[:, 0] == a
        groups[name] = {"near_copy": float((distance[mine] < threshold).mean()),
                        "diversity": float(np.mean([v for c, v in diversity.items() if c // 14 == a])),
                        "real_diversity": float(np.mean([v for c, v in real_diversity.items() if c // 14 == a]))}
    return {"by_age": by_age, "mean": mean, "all": float(hits.mean()), "worst": worst, "gap": mean - by_age[worst],
            "groups": groups}


def cas(train_set, heldout, synthetic, args):
    """{training set: [age recall per group of each seed]} for real alone and real + each balanced synthetic set."""
    from utils.evaluation.cas import predict, train_classifier
    from utils.labels import AGES

    test_images, test_attributes = heldout
    sets = {"real (long-tailed)": train_set}
    for recipe, (images, attributes) in synthetic.items():
        sets[f"real + synthetic ({recipe})"] = (np.concatenate([train_set[0], images]),
                                                np.concatenate([train_set[1], attributes]))
    out = {}
    for name, (images, attributes) in sets.items():
        labels = {a: attributes[:, i] for i, a in enumerate(("age", "gender", "race"))}
        out[name] = []
        for seed in range(args.cas_seeds):
            model = train_classifier(images, labels, args.cas_steps, seed=seed, device=args.device)
            predicted = predict(model, test_images, device=args.device)["age"]
            out[name].append({age: float((predicted[test_attributes[:, 0] == a] == a).mean())
                              for a, age in enumerate(AGES)})
        print(f"(CAS {name}: {len(images)} training images, {args.cas_seeds} seeds)", flush=True)
    return out


def spread(values):
    return f"{100 * np.mean(values):.1f} ± {100 * np.std(values):.1f}"


def main(args):
    run_in_work_folder(args, "fairface-bench-long-tail-", run_benchmark)


def run_benchmark(args, work):
    from utils.data.demo_data import LONG_TAILED_DEMO_IMAGES, make_demo_dataset
    from utils.data.group_balance import condition_counts
    from utils.labels import AGES, NUM_CONDITIONS, decode_condition

    print("\n".join(["## Rare groups: long-tailed demo data", *machine_lines(args.device)]), flush=True)
    for name, seed, count, distribution in (("long-tailed", 0, LONG_TAILED_DEMO_IMAGES, "fairface"),
                                            ("heldout", 1, args.heldout_images, "uniform")):
        if not os.path.isfile(os.path.join(work, name, "README.md")):
            make_demo_dataset(os.path.join(work, name), num_images=count, resolution=64, seed=seed,
                              distribution=distribution)
    runs = {recipe: train(recipe, work, args) for recipe in args.recipes}
    train_set, heldout = real_images(os.path.join(work, "long-tailed"), 32), real_images(os.path.join(work, "heldout"), 32)
    share = condition_counts(LONG_TAILED_DEMO_IMAGES, "fairface").reshape(len(AGES), -1).sum(1) / LONG_TAILED_DEMO_IMAGES

    results = {recipe: evaluate(output, train_set, heldout, args) for recipe, (output, _) in runs.items()}
    header = ["age group", "training share", *args.recipes]
    rows = [[age, f"{100 * share[a]:.1f}%", *[f"{100 * results[r]['by_age'][age]:.1f}%" for r in args.recipes]]
            for a, age in enumerate(AGES)]
    rows += [["mean of the 9", "", *[f"{100 * results[r]['mean']:.1f}%" for r in args.recipes]],
             ["worst group's gap (pts)", "", *[f"{100 * results[r]['gap']:.1f} ({results[r]['worst']})"
                                              for r in args.recipes]]]
    for group in (RAREST_AGES[0], COMMONEST_AGE):
        rows.append([f"near-copy rate, {group}", "", *[f"{100 * results[r]['groups'][group]['near_copy']:.1f}%"
                                                      for r in args.recipes]])
    for group in (RAREST_AGES[0], COMMONEST_AGE):  # beside the unseen real faces' own (the data's variety)
        real = results[args.recipes[0]]["groups"][group]["real_diversity"]
        rows.append([f"diversity, {group} (real: {real:.4f})", "", *[
            f"{results[r]['groups'][group]['diversity']:.4f}" for r in args.recipes]])
    rows.append(["diversity ratio, rarest / commonest", "", *[
        f"{results[r]['groups'][RAREST_AGES[0]]['diversity'] / results[r]['groups'][COMMONEST_AGE]['diversity']:.2f}"
        for r in args.recipes]])
    print(f"\n### All three attributes right per age group ({args.max_train_steps} steps, {args.seeds} images per "
          "condition, default sampler)\n" + markdown_table(header, rows), flush=True)
    for recipe, (_, seconds) in runs.items():
        print(f"({recipe}: trained in {seconds:.0f} s; nan: reused from --work_dir)")

    synthetic = {}
    for recipe, (output, _) in runs.items():
        conditions = [decode_condition(c) for c in range(NUM_CONDITIONS) for _ in range(args.synthetic_per_condition)]
        images = sample(output, conditions, [5000 + k for k in range(len(conditions))], args)
        synthetic[recipe] = (images, np.asarray(conditions))
    recalls = cas(train_set, heldout, synthetic, args)
    rows = []
    for name, per_seed in recalls.items():
        rarest = [np.mean([seed[a] for a in RAREST_AGES]) for seed in per_seed]
        overall = [np.mean(list(seed.values())) for seed in per_seed]
        worst = [min(seed.values()) for seed in per_seed]
        rows.append([name, *[spread([seed[a] for seed in per_seed]) for a in AGES], spread(rarest), spread(worst),
                     spread(overall)])
    print(f"\n### Age recall of a classifier on unseen balanced real faces ({args.cas_steps} steps, mean ± std over "
          f"{args.cas_seeds} seeds; synthetic: {args.synthetic_per_condition} per condition)\n" + markdown_table(
              ["trained on", *AGES, "3 rarest ages", "worst age", "mean of 9"], rows), flush=True)


if __name__ == "__main__":
    main(parse_args())
