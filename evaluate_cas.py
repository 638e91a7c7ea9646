"""Is a generated dataset useful? Classification Accuracy Score: train on synthetic, test on real.

    python evaluate_cas.py --synthetic fairface-synthetic --dataset_name HuggingFaceM4/FairFace --output_dir cas
    python evaluate_cas.py --synthetic demo-synthetic --dataset_name demo_data/fairface-synthetic \\
        --dataset_config_names 0.25 1.25 --output_dir cas-demo --device cpu

One small CNN (age, gender and race heads; utils/evaluation/cas.py) is trained from scratch on each of
(a) the synthetic dataset (generate_dataset.py's folder or Hub id; labels = the requested ones), (b) as many real
images from --train_split, (c) both together, with the same architecture, seed and number of steps, and tested on
the real images of --test_split. Honest only if the generator never saw --test_split: train it with
train_fairface.py --dataset_splits train and test on validation (the default here).
Writes metrics.json and report.md (accuracy per attribute and per group, beside the real-data baseline).
"""

import argparse
import io
import json
import os

import numpy as np

from utils.cli import fail, first_line, positive_int
from utils.model.conditions import resolve_device_dtype
from utils.data.fairface import decode_image, load_fairface
from utils.evaluation.cas import cas_markdown, classification_accuracy_scores
from utils.labels import ATTRIBUTES, check_dataset_labels


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
        "%(default)s).")
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
    try:
        args.device = resolve_device_dtype(args.device)[0]
    except ValueError as error:
        fail(str(error), prog=parser.prog)
    return args


def decode_all(records, resolution):
    """uint8 (N, res, res, 3) of the usable records, and their positions."""
    images = [decode_image(record, resolution) for record in records]
    keep = [i for i, image in enumerate(images) if image is not None]
    return np.stack([images[i] for i in keep]), np.asarray(keep, dtype=np.int64)


def labels_of(dataset, rows):
    return {a: np.asarray(dataset[a])[rows] for a in ATTRIBUTES}


def main(args):
    import datasets

    rng = np.random.default_rng(args.seed)
    try:
        synthetic = datasets.load_dataset(args.synthetic, split="train")
        synthetic = synthetic.cast_column("image", datasets.Image(decode=False))
        check_dataset_labels(synthetic.features)
        real_train = load_fairface(args.dataset_name, args.dataset_config_names, [args.train_split])
        real_test = load_fairface(args.dataset_name, args.dataset_config_names, [args.test_split])
    except (ValueError, OSError, datasets.exceptions.DatasetNotFoundError) as error:
        fail(f"cannot load the data: {first_line(error)}")
    if args.resolution is None:  # the synthetic images' own size
        from PIL import Image

        args.resolution = min(Image.open(io.BytesIO(synthetic[0]["image"]["bytes"])).size)
    resolution = args.resolution
    synthetic_images, rows = decode_all(synthetic["image"], resolution)
    synthetic_labels = labels_of(synthetic, rows)
    if len(real_train) < len(synthetic_images):
        print(f"warning: only {len(real_train)} real training images for {len(synthetic_images)} synthetic ones")
    chosen = np.sort(rng.choice(len(real_train), size=min(len(real_train), len(synthetic_images)), replace=False))
    real_images, rows = decode_all(real_train.select(chosen)["image"], resolution)
    real_labels = labels_of(real_train.select(chosen), rows)
    test_rows = np.arange(len(real_test)) if not args.max_test or args.max_test >= len(real_test) else \
        np.sort(rng.choice(len(real_test), size=args.max_test, replace=False))
    test_images, rows = decode_all(real_test.select(test_rows)["image"], resolution)
    test_labels = labels_of(real_test.select(test_rows), rows)
    steps = args.train_steps or max(1, 10 * len(synthetic_images) // args.batch_size)
    print(f"{len(synthetic_images)} synthetic, {len(real_images)} real training images; {len(test_images)} real "
          f"test images ({args.test_split}); {steps} steps each at {resolution} px")

    both = {a: np.concatenate([synthetic_labels[a], real_labels[a]]) for a in ATTRIBUTES}
    training_sets = {"synthetic": (synthetic_images, synthetic_labels), "real": (real_images, real_labels),
                     "real+synthetic": (np.concatenate([synthetic_images, real_images]), both)}
    results = classification_accuracy_scores(training_sets, test_images, test_labels, steps,
                                             batch_size=args.batch_size, learning_rate=args.learning_rate,
                                             seed=args.seed, device=args.device)
    settings = {k: str(v) if k == "device" else v for k, v in vars(args).items()}
    metrics = {"settings": {**settings, "resolution": resolution, "train_steps": steps},
               "counts": {"synthetic": len(synthetic_images), "real": len(real_images), "test": len(test_images)},
               "cas": results}
    os.makedirs(args.output_dir, exist_ok=True)
    with open(os.path.join(args.output_dir, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=1)
    caption = (f"Classification Accuracy Score: a small CNN trained for {steps} steps on each set "
               f"({len(synthetic_images)} synthetic / {len(real_images)} real images), tested on {len(test_images)} "
               f"real {args.test_split} images of `{args.dataset_name}`.")
    with open(os.path.join(args.output_dir, "report.md"), "w") as f:
        f.write("# Classification Accuracy Score\n\n" + cas_markdown(results, caption))
    print(f"wrote {args.output_dir}/report.md and metrics.json")
    return metrics


if __name__ == "__main__":
    main(parse_args())
