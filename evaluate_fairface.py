"""Evaluate a trained model: does it draw the faces it was asked for, equally well for every group, and does it
copy training faces?

    python evaluate_fairface.py --model fairface-diffusion-128 --output_dir eval-128          # GPU: minutes
    python evaluate_fairface.py --model fairface-demo --dataset_name demo_data/fairface-synthetic \\
        --conditions 0-13 --num_images_per_condition 2 --max_train_pool 500 --device cpu     # CPU: a quick look
    python evaluate_fairface.py --samples_dir eval-128/samples --output_dir eval-128-again     # reuse images

1. Images: N per condition sampled from --model (image k of every condition uses seed --seed + k; saved to
   OUTPUT_DIR/samples/ as cond042_20-29_male_east-asian_seed0003.png), or read from --samples_dir: every
   .png/.jpg/.webp whose name contains "cond<id>" (cond42, cond042_...), e.g. sample_fairface.py's output.
   --framing tight wide samples N per condition and framing (cond042_..._tight_seed0003.png) and also reports
   accuracy and Fréchet distance per framing, against real images of that framing's config (0.25, 1.25).
2. Attribute fidelity: age, gender and race of every image by a zero-shot CLIP (--classifier) or FairFace-trained
   image classifiers (--age_classifier ...); accuracy, confusion matrices and accuracy per group, for the
   generated images and, as the classifier's own ceiling, for real FairFace images of the same conditions.
3. Quality: Fréchet distance between generated and real images in DINOv2 feature space (--feature_model),
   overall and per age, gender and race group; diversity within each condition.
4. Memorisation: every generated image's nearest training image (cosine, same features), compared with the
   nearest-training-image distances of real images the model did not see (see --heldout_split).

Writes to --output_dir: metrics.json, report.md, per_image.csv, accuracy_by_{age,gender,race}.png,
confusion_{age,gender,race}.png, frechet_by_group.png, nearest_neighbours.png (and samples/).
Works offline when the models and dataset are in the Hugging Face cache (HF_HUB_OFFLINE=1).
"""

import argparse
import csv
import json
import os

import numpy as np
import torch
from PIL import Image

from utils import evaluation as ev
from utils.cli import DEFAULT_MODEL_DIR, fail, first_line, load_or_fail, positive_int
from utils.model.conditions import (add_sampling_args, condition_from_id, framing_or_exit, load_pipeline_or_exit,
                                    parse_condition_ids, resolve_device_dtype, sample_filename, sampling_settings)
from utils.data.fairface import decode_image, load_fairface
from utils.labels import ATTRIBUTES, FRAMINGS, NUM_CONDITIONS, decode_condition, parse_framing
from utils.model.pipeline import generate


def parse_args(input_args=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "),
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    add = parser.add_argument_group("images to evaluate").add_argument
    add("--model", default=DEFAULT_MODEL_DIR, help="Pipeline folder or Hub repo id to sample from.")
    add("--samples_dir", default=None, help="Evaluate these already-sampled images instead of sampling: files whose "
        "name contains cond<id> (e.g. cond042_20-29_male_east-asian_seed0003.png).")
    add("--conditions", "--condition", dest="conditions", nargs="+", default=["all"], metavar="ID",
        help=f"'all' (default) or condition ids 0-{NUM_CONDITIONS - 1} (age*14 + gender*7 + race) and ranges, "
             "e.g. 0 42 100-125.")
    add("--num_images_per_condition", type=positive_int, default=4, help="Images sampled per condition (and framing).")
    add("--framing", nargs="+", choices=FRAMINGS, default=None, help="Sample every condition with each of these "
        "framings (models trained with framing) and report accuracy and Fréchet distance per framing too "
        "(default: the model's choice).")
    add("--seed", type=int, default=0, help="Image k of every condition uses seed SEED + k; also seeds the choice "
        "of real images.")
    add("--resolution", type=positive_int, default=None,
        help="Size real images are decoded at (default: the generated images' size, so both are resized alike).")
    add = parser.add_argument_group("classifiers and features").add_argument
    ev.add_classifier_args(add)
    add = parser.add_argument_group("real data and memorisation").add_argument
    add("--dataset_name", default="HuggingFaceM4/FairFace", help="Hub dataset id or local folder in its layout.")
    ev.add_memorisation_args(add)
    add("--heldout_split", default=None, help="A split the model did NOT see, as memorisation reference. Default: "
        "leave-one-out (training images against the pool minus themselves and their other-padding copy).")
    add("--cache_dir", default=None, help="datasets cache directory.")
    add("--real_per_condition", type=positive_int, default=None,
        help="Real images per condition for the classifier ceiling and the Fréchet distance (default: "
             "--num_images_per_condition).")
    add("--num_pairs", type=positive_int, default=16, help="Closest generated/training pairs drawn.")
    add = parser.add_argument_group("output and speed").add_argument
    add("--output_dir", default="evaluation", help="Where metrics.json, report.md and the plots go.")
    add("--dataloader_num_workers", type=int, default=0, help="Processes decoding and preprocessing the training "
        "pool (0 = in the main process; 8 makes a full FairFace pool several times faster).")
    # As sample_fairface.py: --scheduler --num_inference_steps --guidance_scale --batch_size --device --dtype
    # (--batch_size and --device also serve the classifiers and the feature model; --dtype only the sampler).
    add_sampling_args(parser, batch_size=32)
    args = parser.parse_args(input_args)
    try:
        args.condition_ids = parse_condition_ids(args.conditions)
        args.torch_device, args.torch_dtype = resolve_device_dtype(args.device, args.dtype)
    except ValueError as error:
        parser.error(str(error))
    if args.heldout_split in args.train_splits:
        parser.error(f"--heldout_split {args.heldout_split!r} is one of --train_splits; give a split the model did "
                     "not see, or leave it out for leave-one-out")
    if args.samples_dir and args.framing:
        parser.error("--framing is for sampling from --model; --samples_dir images are evaluated as they are")
    if args.samples_dir and not os.path.isdir(args.samples_dir):
        parser.error(f"--samples_dir {args.samples_dir!r} is not a folder")
    args.real_per_condition = args.real_per_condition or args.num_images_per_condition
    return args


def main(args):
    # ---------------------------------------------------------------------------------------- setup
    try:
        os.makedirs(args.output_dir, exist_ok=True)
    except OSError as error:
        fail(f"cannot create output folder {args.output_dir!r}: {error.strerror or error}")
    rng = np.random.default_rng(args.seed)

    # ---------------------------------------------------------------------------------------- models (first: fail fast)
    device = args.torch_device
    pipe = None if args.samples_dir else load_pipeline_or_exit(args.model, device, args.torch_dtype, args.scheduler)
    framings = [framing_or_exit(pipe, f, args.model) for f in args.framing] if args.framing else [None]
    classifiers = ev.load_classifiers(args, device, load_or_fail)
    extractor = load_or_fail("feature model", args.feature_model,
                             lambda: ev.FeatureExtractor(args.feature_model, device, args.batch_size))

    # ---------------------------------------------------------------------------------------- real data (not decoded)
    def parts_of(splits):
        try:
            return [((config, split), load_fairface(args.dataset_name, [config], [split], args.cache_dir))
                    for config in args.dataset_config_names for split in splits]
        except (ValueError, OSError) as error:  # OSError: ConnectionError offline, unreadable files
            fail(f"cannot load dataset {args.dataset_name!r}: {first_line(error)}")

    pool = ev.RealPool(parts_of(args.train_splits))
    heldout = ev.RealPool(parts_of([args.heldout_split])) if args.heldout_split else None

    # ---------------------------------------------------------------------------------------- generated images
    if args.samples_dir:
        wanted = None if args.conditions == ["all"] else args.condition_ids
        found = ev.find_samples(args.samples_dir, wanted)
        if not found:
            fail(f"no images named cond<id>... in {args.samples_dir!r}" + ("" if wanted is None else
                                                                           " for the requested --conditions"))
        generated = [Image.open(path).convert("RGB") for path, _, _ in found]
        generated_ids, generated_framings = np.array([c for _, c, _ in found]), np.full(len(found), -1)
        names = [os.path.basename(path) for path, _, _ in found]
        model_description = args.samples_dir
        print(f"{len(generated)} images of {len(set(generated_ids.tolist()))} conditions from {args.samples_dir}")
    else:
        pipe.set_progress_bar_config(disable=True)
        ids = np.repeat(args.condition_ids, args.num_images_per_condition)
        seeds = [args.seed + k for _ in args.condition_ids for k in range(args.num_images_per_condition)]
        print(f"sampling {len(seeds) * len(framings)} images ({len(args.condition_ids)} conditions x "
              f"{args.num_images_per_condition}" + (f" x framings {', '.join(framings)})" if args.framing else ")"))
        settings = sampling_settings(pipe, args)  # flags given, else the model's saved defaults
        vars(args).update(settings)  # metrics.json records what was used
        generated, names = [], []
        for framing in framings:  # seed k of a condition starts from the same noise in every framing
            generated += generate(pipe, [decode_condition(c) for c in ids], seeds, args.batch_size, progress=True,
                                  framing=framing, **settings)
            names += [sample_filename(condition_from_id(int(c)), seed, framing) for c, seed in zip(ids, seeds)]
        generated_ids = np.tile(ids, len(framings))
        generated_framings = np.repeat([-1 if f is None else parse_framing(f) for f in framings], len(ids))
        del pipe
        os.makedirs(os.path.join(args.output_dir, "samples"), exist_ok=True)
        for image, name in zip(generated, names):
            image.save(os.path.join(args.output_dir, "samples", name))
        model_description = args.model
    conditions = sorted(set(generated_ids.tolist()))
    sizes = [image.width for image in generated]
    resolution = args.resolution or max(set(sizes), key=sizes.count)
    generated_attributes = ev.attribute_arrays(generated_ids)

    # ---------------------------------------------------------------------------------------- real images
    if args.framing:  # real images of each requested framing's config, as many as without --framing each
        real_index = np.concatenate([ev.sample_per_condition(np.where(pool.framings == parse_framing(f),
                                                                      pool.condition_ids, -1), conditions,
                                                             args.real_per_condition, rng) for f in args.framing])
    else:
        real_index = ev.sample_per_condition(pool.condition_ids, conditions, args.real_per_condition, rng)
    real = [decode_image(pool.record(i), resolution) for i in real_index]
    usable = [k for k, image in enumerate(real) if image is not None]
    real, real_index = [real[k] for k in usable], real_index[usable]
    if not real:
        fail(f"no usable real images of the evaluated conditions in {args.dataset_name!r}")
    real_ids = pool.condition_ids[real_index]
    real_attributes = ev.attribute_arrays(real_ids)
    pool_index = np.arange(len(pool))
    if args.max_train_pool and args.max_train_pool < len(pool):
        pool_index = np.sort(rng.choice(len(pool), size=args.max_train_pool, replace=False))
    print(f"{len(real)} real images of the same conditions; training pool of {len(pool_index)} images "
          f"(resolution {resolution})")

    # ---------------------------------------------------------------------------------------- attribute fidelity
    print("classifying generated and real images")
    generated_predictions = ev.classify(classifiers, generated)
    real_predictions = ev.classify(classifiers, real)
    fidelity = {"generated": ev.fidelity_metrics(generated_attributes, generated_predictions, generated_ids),
                "real": ev.fidelity_metrics(real_attributes, real_predictions, real_ids)}

    # ---------------------------------------------------------------------------------------- quality, diversity
    print("features of generated and real images")
    generated_features, real_features = extractor(generated), extractor(real)
    frechet = {"overall": ev.frechet_distance_between(generated_features, real_features)}
    for attribute, names_ in ATTRIBUTES.items():
        frechet[f"by_{attribute}"] = ev.frechet_by_group(generated_features, generated_attributes[attribute],
                                                         real_features, real_attributes[attribute], names_)
    def subset(arrays, keep):
        return {attribute: values[keep] for attribute, values in arrays.items()}

    by_framing = {}
    for framing in args.framing or []:
        g, r = generated_framings == parse_framing(framing), pool.framings[real_index] == parse_framing(framing)
        by_framing[framing] = {
            "fidelity": {"generated": ev.fidelity_metrics(subset(generated_attributes, g),
                                                          subset(generated_predictions, g), generated_ids[g]),
                         "real": ev.fidelity_metrics(subset(real_attributes, r), subset(real_predictions, r),
                                                     real_ids[r])},
            "frechet_distance": ev.frechet_distance_between(generated_features[g], real_features[r]),
            "generated": int(g.sum()), "real": int(r.sum())}
    diversity = {"generated": ev.summarise_diversity(ev.diversity_by_condition(generated_features, generated_ids)),
                 "real": ev.summarise_diversity(ev.diversity_by_condition(real_features, real_ids))}

    # ---------------------------------------------------------------------------------------- memorisation
    pool_features = ev.record_features(extractor, pool, pool_index, resolution, args.batch_size,
                                       args.dataloader_num_workers, progress=True, desc="training pool features")
    generated_distance, generated_nearest = ev.nearest_neighbours(generated_features, pool_features,
                                                                  device=device)
    heldout_features = None
    if args.heldout_split:
        chosen = np.sort(rng.choice(len(heldout), size=min(args.num_heldout, len(heldout)), replace=False))
        heldout_features = ev.record_features(extractor, heldout, chosen, resolution, args.batch_size,
                                              args.dataloader_num_workers, progress=True, desc="held-out features")
    reference_distance, reference_kind = ev.reference_distances(pool, pool_index, pool_features, args.num_heldout,
                                                                rng, heldout_features, device)
    if args.heldout_split:
        reference_kind += f" {args.heldout_split!r}"
    memo = ev.memorisation(generated_distance, reference_distance, args.memorisation_percentile)
    memo["reference_kind"] = reference_kind
    order = [int(k) for k in np.argsort(np.nan_to_num(generated_distance, nan=np.inf))[:args.num_pairs]
             if generated_nearest[k] >= 0]
    memo["closest_pairs"] = [{"generated": names[k], "condition": int(generated_ids[k]),
                              "training_image": pool.source(pool_index[generated_nearest[k]]),
                              "distance": float(generated_distance[k])} for k in order]

    # ---------------------------------------------------------------------------------------- outputs
    settings = {k: v for k, v in vars(args).items() if k not in ("condition_ids", "torch_device", "torch_dtype")}
    settings.update(model_description=model_description, resolution=resolution, conditions_evaluated=conditions,
                    torch=torch.__version__)
    metrics = {
        "settings": settings, "classifiers": ev.describe_classifiers(classifiers),
        "counts": {"generated": len(generated), "real": len(real), "conditions": len(conditions),
                   "train_pool": int(len(pool_index)),
                   "train_pool_unusable": int((~np.isfinite(pool_features).all(axis=1)).sum()),
                   "aligned_copies": [f"{a[0]}/{a[1]} = {b[0]}/{b[1]}" for a, b in pool.aligned]},
        "fidelity": fidelity, "training_share": ev.training_shares(pool.attributes),
        "below_mean": ev.groups_below_mean(fidelity["generated"]["per_group"]["all"]),
        "frechet_distance": frechet, "diversity": diversity, "memorisation": memo,
        "by_framing": by_framing,
    }
    with open(os.path.join(args.output_dir, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=1, allow_nan=False)
    with open(os.path.join(args.output_dir, "report.md"), "w") as f:
        f.write(ev.report_markdown(metrics))
    with open(os.path.join(args.output_dir, "per_image.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "condition", *[f"requested_{a}" for a in ATTRIBUTES],
                         *[f"predicted_{a}" for a in ATTRIBUTES], "nearest_training_image", "nearest_distance"])
        for k, name in enumerate(names):
            nearest = pool.source(pool_index[generated_nearest[k]]) if generated_nearest[k] >= 0 else ""
            writer.writerow([name, int(generated_ids[k]),
                             *[ATTRIBUTES[a][generated_attributes[a][k]] for a in ATTRIBUTES],
                             *[ATTRIBUTES[a][generated_predictions[a][k]] for a in ATTRIBUTES],
                             nearest, f"{generated_distance[k]:.5f}"])
    draw_plots(args.output_dir, fidelity, frechet, memo, generated, order, generated_ids, generated_distance,
               [pool_index[generated_nearest[k]] for k in order], pool, resolution)

    accuracy = {side: fidelity[side]["accuracy"] for side in ("generated", "real")}
    summary = ", ".join(f"{a} {ev.fmt_percent(accuracy['generated'][a])} (real {ev.fmt_percent(accuracy['real'][a])})"
                        for a in ("age", "gender", "race", "all"))
    print(f"accuracy: {summary}")
    print(f"Fréchet distance {ev.fmt_number(frechet['overall'])}; memorisation share {ev.fmt_percent(memo['share'])} "
          f"(expected {ev.fmt_percent(memo['expected_share'])})")
    print(f"wrote {os.path.join(args.output_dir, 'report.md')} and metrics.json")


def draw_plots(output_dir, fidelity, frechet, memo, generated, order, generated_ids, distances, nearest, pool,
               resolution):
    gen, real = fidelity["generated"], fidelity["real"]
    for group_by, names in ATTRIBUTES.items():
        panels = [(f"{measured} accuracy", [(ev.SHORT_NAMES[group_by][i], [
            gen["per_group"][measured][f"by_{group_by}"][name]["accuracy"],
            real["per_group"][measured][f"by_{group_by}"][name]["accuracy"]]) for i, name in enumerate(names)])
            for measured in ("age", "gender", "race", "all")]
        ev.bar_panels(f"Attribute accuracy per {group_by} group", panels).save(
            os.path.join(output_dir, f"accuracy_by_{group_by}.png"))
    for attribute in ATTRIBUTES:
        labels = list(ev.SHORT_NAMES[attribute])
        ev.hstack([ev.confusion_heatmap(gen["confusion"][attribute], labels, f"{attribute}: generated"),
                   ev.confusion_heatmap(real["confusion"][attribute], labels, f"{attribute}: real (ceiling)")]).save(
            os.path.join(output_dir, f"confusion_{attribute}.png"))
    panels = [(f"by {group_by}", [(ev.SHORT_NAMES[group_by][i], [frechet[f"by_{group_by}"][name]["frechet_distance"]])
                                  for i, name in enumerate(names)]) for group_by, names in ATTRIBUTES.items()]
    ev.bar_panels("Frechet distance to real images per group (lower = closer)", panels, series=("generated",),
                  max_value=None, value_format="{:.3g}").save(os.path.join(output_dir, "frechet_by_group.png"))
    threshold = memo["threshold"]
    pairs = []
    for k, index in zip(order, nearest):
        flag = " *" if threshold is not None and distances[k] < threshold else ""
        pairs.append((generated[k], decode_image(pool.record(int(index)), resolution),
                      f"cond {int(generated_ids[k])}  d={distances[k]:.4f}{flag}"))
    title = (f"Closest generated (left) / training (right) pairs; * = below the threshold "
             f"{ev.fmt_number(threshold, 4)}")
    ev.pair_grid(pairs, title=title).save(os.path.join(output_dir, "nearest_neighbours.png"))


if __name__ == "__main__":
    main(parse_args())
