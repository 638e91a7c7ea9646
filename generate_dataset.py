"""Generate a labelled synthetic face dataset from a trained fairface-diffusion model: parquet shards and a card.

    python generate_dataset.py --model fairface-demo --images_per_condition 4 --output_dir demo-synthetic
    accelerate launch generate_dataset.py --model you/fairface-diffusion-128 --images_per_condition 1000 \\
        --output_dir fairface-synthetic --framing tight wide --verify --keep verified \\
        --push_to_hub you/fairface-synthetic

The result loads with datasets.load_dataset(OUTPUT_DIR) (and, pushed, load_dataset("you/fairface-synthetic")):
columns image, age, gender, race (FairFace's ClassLabels, in HuggingFaceM4/FairFace's order), framing (with
--framing), condition_id, seed, and with --verify p_age, p_gender, p_race, verified, attempts; stored as
data/train-XXXXX-of-YYYYY.parquet with a dataset card (README.md) that records where the images came from.
Conditions: ids/ranges/all (--conditions) or every condition matching --age/--gender/--race; the default is all
126. --distribution uniform (the same count for each), fairface (FairFace's own condition frequencies, counted
from --dataset_name's train split) or FILE.json ({"condition": {"42": 2, ...}} or {"age": {"20-29": 2, ...},
"race": {...}}); --images_per_condition x conditions images in all (x framings), exact counts printed first.
Image i uses seed --seed + i (EDM's scheme): the same command gives the same dataset on any number of processes
or machines (shards are assigned by index). Shards are written atomically: rerun the same command after a
crash, a kill or a stop signal (SIGTERM/SIGINT: stops after the shard) and it finishes the missing shards only.
"""

import argparse
import os
import sys

import numpy as np

from utils.datasets import dataset_card, dataset_plan as plans, dataset_processes as processes, dataset_shards as shards
from utils.files.atomic_files import SaveError
from utils.cli import DEFAULT_MODEL_DIR, fail, load_or_fail, positive_int
from utils.model.conditions import (add_condition_args, add_sampling_args, conditions_from_args, framing_or_exit,
                                    load_pipeline_or_exit, resolve_device_dtype, sampling_settings)
from utils.evaluation.classifiers import CLIP_DEFAULT, add_classifier_args, load_classifiers, requested_label_scores
from utils.evaluation.memorisation import add_memorisation_args, load_near_copy_check
from utils.labels import ATTRIBUTES, FRAMINGS, NUM_CONDITIONS, decode_condition
from utils.model.pipeline import generate
from utils.run.run_setup import add_ddp_timeout_arg
from utils.run.stop_signals import StopRequest

# Shard size: 1000 images of 128 px are ~30 MB of PNG (well under the Hub's 500 MB parquet default) and keep a
# rerun's lost work to one shard per process; memory holds one shard of images per process, whatever the total.
DEFAULT_SHARD_SIZE = 1000
MEMORISATION_CACHE = ".memorisation.npz"  # the training pool's features and the threshold (never pushed)
# Flags that decide the rows (the dataset folder's record): a rerun must repeat them; dtype as resolved (the
# device's default when not given). Not --batch_size, --device, process counts: they change at most float rounding.
RECORDED_FLAGS = ["condition_ids", "counts", "framing", "seed", "shard_size", "scheduler", "num_inference_steps",
                  "guidance_scale", "guidance_interval", "dtype", "verify", "verify_attributes", "keep", "max_attempts",
                  "classifier", "age_classifier", "gender_classifier", "race_classifier", "check_memorisation"]
MEMORISATION_FLAGS = ["feature_model", "dataset_config_names", "train_splits", "max_train_pool", "num_heldout",
                      "memorisation_percentile"]
RECORDED_FLAGS += MEMORISATION_FLAGS


def parse_args(input_args=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL_DIR, help="Pipeline folder or Hub repo id (default: "
                        "%(default)s).")
    add_condition_args(parser)
    add = parser.add_argument_group("dataset").add_argument
    add("--images_per_condition", type=positive_int, default=100, help="Images per condition (and framing) on "
        "average; exactly this many each with --distribution uniform (default: %(default)s).")
    add("--distribution", default="uniform", help="uniform (default), fairface, or a JSON file of weights.")
    add("--dataset_name", default="HuggingFaceM4/FairFace", help="The model's training data (a Hub id or a local "
        "folder in its layout): --distribution fairface counts labels in its 0.25 train split, "
        "--check_memorisation compares with its images.")
    add("--framing", nargs="+", choices=FRAMINGS, default=None, help="Draw every condition in each of these "
        "framings (models trained with framing); adds a framing column (default: the model's choice, no column).")
    add("--seed", type=int, default=0, help="Image i uses seed SEED + i (default: %(default)s).")
    add("--shard_size", type=positive_int, default=DEFAULT_SHARD_SIZE, help="Images per parquet shard, the unit "
        "of resumption (default: %(default)s).")
    add = parser.add_argument_group("verified labels").add_argument
    add("--verify", action="store_true", help="Score every image with the attribute classifier: p_age, p_gender, "
        "p_race (probability of the requested label) and verified (all three recognised) columns.")
    add("--keep", choices=["all", "verified"], default="all", help="verified: replace images whose requested "
        "attributes are not recognised by images from the next seeds (implies --verify; default: all).")
    add("--verify_attributes", nargs="+", choices=list(ATTRIBUTES), default=list(ATTRIBUTES), help="The requested "
        "attributes an image must show to count as verified (default: all three; e.g. leave out age, which "
        "classifiers read least reliably).")
    add("--max_attempts", type=positive_int, default=10, help="Images tried per row with --keep verified; a row "
        "still unverified after them keeps its last image, verified=false (default: %(default)s).")
    add_classifier_args(add, model_default=True)
    add = parser.add_argument_group("memorisation check").add_argument
    add("--check_memorisation", action="store_true", help="Add nearest_train_distance and near_copy columns: each "
        "image's distance to its nearest training image (of --dataset_name) and whether it is closer than "
        "--memorisation_percentile %% of real images the model did not see (evaluate_fairface.py's check).")
    add_memorisation_args(add)
    add_sampling_args(parser, batch_size=64)
    add = parser.add_argument_group("output").add_argument
    add("--output_dir", default="fairface-synthetic", help="The dataset folder (default: %(default)s/).")
    add("--push_to_hub", nargs="?", const="", default=None, metavar="REPO_ID", help="Upload the dataset (shards "
        "and card) as a dataset repo: user/name, or the folder's name under your account when left out.")
    add("--hub_private_repo", action="store_true")
    add_ddp_timeout_arg(parser)  # rank 0 alone builds --check_memorisation's training pool while the others wait
    args = parser.parse_args(input_args)
    try:
        if not args.condition and all(getattr(args, a) is None for a in ATTRIBUTES):
            args.condition = ["all"]
        args.condition_ids = [c for cond in conditions_from_args(args) for c in range(NUM_CONDITIONS)
                              if all(a is None or a == d for a, d in zip(cond.attributes, decode_condition(c)))]
        args.device, args.torch_dtype = resolve_device_dtype(args.device, args.dtype)
        if args.distribution not in ("uniform", "fairface"):
            if not os.path.isfile(args.distribution):
                raise ValueError(f"--distribution {args.distribution!r}: not uniform, fairface or a JSON file")
            args.counts = plans.exact_counts(plans.json_weights(args.distribution, args.condition_ids),
                                             args.images_per_condition * len(args.condition_ids))
    except ValueError as error:
        fail(str(error), prog=parser.prog)
    if args.distribution == "uniform":
        args.counts = [args.images_per_condition] * len(args.condition_ids)
    args.verify = args.verify or args.keep == "verified"
    return args


def draw(pipe, plan, rows, attempt, args, settings, progress):
    """The images of ``rows`` for their ``attempt`` (seeds from the plan), batched per framing."""
    images, seeds = [], plan.seeds(rows, attempt)
    conditions = [decode_condition(c) for c in plan.condition_ids[rows]]
    for start in range(0, len(rows), args.batch_size):
        chunk = slice(start, start + args.batch_size)
        for framing in dict.fromkeys(plan.framings[rows[chunk]].tolist()):  # one framing per pipeline call
            picked = [i for i in range(len(rows))[chunk] if plan.framings[rows[i]] == framing]
            drawn = generate(pipe, [conditions[i] for i in picked], [seeds[i] for i in picked], args.batch_size,
                             framing=FRAMINGS[framing] if framing >= 0 else None, **settings)
            images += list(zip(picked, drawn))
        progress.update(len(range(len(rows))[chunk]))
    return [image for _, image in sorted(images, key=lambda pair: pair[0])]


def make_shard(pipe, plan, shard, args, settings, classifiers, near_copies, progress):
    rows = plan.shard_rows(shard)
    images, seeds, attempts = draw(pipe, plan, rows, 0, args, settings, progress), plan.seeds(rows), np.ones(len(rows))
    attributes = np.array([decode_condition(c) for c in plan.condition_ids[rows]]).reshape(-1, 3)
    columns = {"age": attributes[:, 0].tolist(), "gender": attributes[:, 1].tolist(), "race": attributes[:, 2].tolist(),
               "framing": plan.framings[rows].tolist(), "condition_id": plan.condition_ids[rows].tolist()}
    if args.verify:
        p, verified = requested_label_scores(classifiers, images, plan.condition_ids[rows], args.verify_attributes)
        for attempt in range(1, args.max_attempts if args.keep == "verified" else 1):
            bad = np.flatnonzero(~verified)
            if not len(bad):
                break
            progress.total += len(bad)
            redrawn = draw(pipe, plan, rows[bad], attempt, args, settings, progress)
            p[bad], verified[bad] = requested_label_scores(classifiers, redrawn, plan.condition_ids[rows[bad]],
                                                           args.verify_attributes)
            for j, k in enumerate(bad):
                images[k], seeds[k], attempts[k] = redrawn[j], plan.seeds([rows[k]], attempt)[0], attempt + 1
        columns.update(p_age=p[:, 0].tolist(), p_gender=p[:, 1].tolist(), p_race=p[:, 2].tolist(),
                       verified=verified.tolist(), attempts=attempts.astype(int).tolist())
    if near_copies is not None:
        distances, near = near_copies(images)
        columns.update(nearest_train_distance=distances.tolist(), near_copy=near.tolist())
    return {**columns, "image": images, "seed": seeds}


def main(args):
    from tqdm.auto import tqdm

    state, device = processes.start_processes(args)  # the group waits --ddp_timeout; --device cuda:1 is honoured
    pipe = load_pipeline_or_exit(args.model, device=device, dtype=args.torch_dtype, scheduler=args.scheduler)
    for framing in args.framing or []:
        framing_or_exit(pipe, framing, args.model)
    pipe.set_progress_bar_config(disable=True)
    try:
        settings = sampling_settings(pipe, args)
    except ValueError as error:  # steps or a guidance interval this model's sampler cannot take
        fail(str(error))
    if args.distribution == "fairface":
        try:
            args.counts = plans.exact_counts(plans.fairface_weights(args.dataset_name, args.condition_ids),
                                             args.images_per_condition * len(args.condition_ids))
        except (ValueError, OSError) as error:
            fail(f"--distribution fairface: cannot count labels in {args.dataset_name!r}: {error}")
    if sum(args.counts) == 0:
        fail("the distribution gives 0 images; raise --images_per_condition")
    plan = plans.Plan(args.condition_ids, args.counts, args.framing, args.seed, args.shard_size)
    # The weight files' SHA-256 as `sha256sum` prints them (users can check them), what the model's card says it
    # was trained on
    files, revision, trained_on = dataset_card.model_provenance(args.model, args.dataset_name)
    if args.verify and args.classifier is None:  # a demo model's faces are read by the demo reader, unless told
        args.classifier = "demo" if trained_on["synthetic"] else CLIP_DEFAULT
        if trained_on["synthetic"] and state.is_main_process:
            print(f"verifying with --classifier demo: the card of {dataset_card.public_name(args.model)} says it was "
                  "trained on synthetic demo data (give --classifier to choose another)")
    classifiers = load_classifiers(args, device, load_or_fail) if args.verify else None
    record = {flag: getattr(args, flag, None) for flag in RECORDED_FLAGS}
    if args.check_memorisation:  # the training images compared with (a local folder by its absolute path)
        record["dataset_name"] = os.path.abspath(args.dataset_name) if os.path.isdir(args.dataset_name) else \
            args.dataset_name
    else:
        record.update({flag: None for flag in MEMORISATION_FLAGS})
    record.update(settings, model=os.path.abspath(args.model) if os.path.isdir(args.model) else args.model,
                  model_files=files, model_revision=revision, dtype=str(args.torch_dtype).replace("torch.", ""),
                  devices=[device.type], guidance_interval=settings["guidance_interval"] and
                  list(settings["guidance_interval"]), scheduler=type(pipe.scheduler).__name__)
    plans.prepare_folder(args.output_dir, state, record)
    near_copies = load_near_copy_check(args, state, device, pipe.unet.config.sample_size, os.path.join(
        args.output_dir, MEMORISATION_CACHE)) if args.check_memorisation else None

    # Generate: this process's missing shards, each written whole, one process per shard.
    shard_features = shards.features(framing=bool(args.framing), verify=args.verify, memorisation=bool(near_copies))
    mine = [k for k in plan.shards_of(state.process_index, state.num_processes)
            if not os.path.exists(plan.shard_path(args.output_dir, k))]
    if state.is_main_process:
        done = sum(os.path.exists(plan.shard_path(args.output_dir, k)) for k in range(plan.num_shards))
        print(f"{plan.num_rows} images ({len(args.condition_ids)} conditions, {args.distribution}) in "
              f"{plan.num_shards} shard(s), {done} already done; on {state.num_processes} process(es); counts: " +
              "; ".join(f"{a} " + ", ".join(f"{n} {c}" for n, c in counts.items() if c)
                        for a, counts in plan.counts_by().items()))
    stop = StopRequest(after="this shard (finished shards are kept)")
    progress = tqdm(total=sum(len(plan.shard_rows(k)) for k in mine), unit="img", desc="generating",
                    disable=not state.is_main_process, smoothing=0.1)
    written = 0
    for shard in mine:
        if stop.signal is not None:
            break
        columns = make_shard(pipe, plan, shard, args, settings, classifiers, near_copies, progress)
        try:
            shards.write_shard(plan.shard_path(args.output_dir, shard), columns, shard_features)
        except SaveError as error:
            progress.close()  # the error is the last line
            fail(f"{error}; the {written} shard(s) this process wrote are kept: rerun the same command to go on" +
                 f" (process {state.process_index} of {state.num_processes})" * (state.num_processes > 1))
        written += 1
    progress.close()
    processes.wait_for_everyone(state, written, args.ddp_timeout)  # one line on every process if one failed

    # Finish: the card once every shard is there (a stopped run is finished by rerunning the command).
    paths = [plan.shard_path(args.output_dir, k) for k in range(plan.num_shards)]
    missing = sum(not os.path.exists(path) for path in paths)
    if missing:
        if state.is_main_process:
            print(f"stopped by {stop.name} with {missing} of {plan.num_shards} shards to go: rerun the same command "
                  "to finish")
        return None
    if state.is_main_process:
        dataset_card.write_card(args.output_dir, paths, plan, args, settings, record,
                                dataset_card.public_command(sys.argv[1:]), near_copies, trained_on)
        print(f"wrote {plan.num_rows} images in {plan.num_shards} shard(s) to {args.output_dir}/ "
              f"(load with datasets.load_dataset({args.output_dir!r}))")
        if args.push_to_hub is not None:
            from utils.hub import uploads

            try:
                uploads.push_dataset(args.output_dir, args.push_to_hub, args.hub_private_repo)
            except uploads.PushError as error:
                fail(str(error))
    return args.output_dir


if __name__ == "__main__":
    from utils.run.distributed import leave_process_group

    try:
        main(parse_args())
    finally:  # several processes: their group, left to interpreter shutdown, can abort the process (exit -6)
        leave_process_group()
