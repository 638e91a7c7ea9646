"""Does the model draw what was asked? Conditioning fidelity of training recipes, measured on the demo data.

For each recipe (epsilon, epsilon + min-SNR, v-prediction + min-SNR) this trains the demo model
(train_fairface.py --demo) for the same budget, samples every one of the 126 conditions from every
--eval_every-th epoch snapshot with the model's saved default sampler (DPM-Solver++ 6 steps, guidance 2;
--num_inference_steps 25 gives the 25 steps of the tables measured before that default), and measures
with utils.data.demo_data.measure_attributes how often the requested age, gender and race are recovered from the
pixels (the synthetic faces encode them in flat, measurable features, so no neural classifier is needed).
Guidance scales 1, 2 and 3 are compared on the final model of the --guidance_recipes. Prints the tables and,
per recipe, the first step at which the target was met: >= 90 % of all three attributes recovered together,
and no age/gender/race group more than 10 points below the mean.

Framing (issue 15): a final model trained with the framing condition (recipe "..., framing"; --demo trains
without it) is also sampled asking for each framing (tight, wide), and utils.data.demo_data.measure_framing reads
from the pixels whether it was drawn ("framing drawn"); the recipe "..., no framing" trains the same model
without it, for the attribute comparison.
EMA: --ema_variants DECAY:POWER ... makes each run keep those EMAs of its weights too (diffusers EMAModel with
warm-up; EMA does not change the raw weights' trajectory, so one run carries them all); every evaluated
snapshot is then evaluated with each, and ema_look_*.png in the work folder shows their samples side by side.

A 2-core CPU trains ~1.9 steps/s and samples one 126-condition evaluation in ~45 s, so the default budget
(5 epochs = 315 steps per recipe, ~14 min) ranks the recipes early in training; the demo's full 16 epochs,
where the target is reached, take ~35 min:

    python benchmarks/conditioning_fidelity.py                                 # ~14 min, 2-core CPU
    python benchmarks/conditioning_fidelity.py --epochs 16 --eval_every 4      # ~35 min: steps to the target
    python benchmarks/conditioning_fidelity.py --epochs 16 --eval_every 16 --recipes \
        "v-prediction + min-SNR 5, framing" "v-prediction + min-SNR 5, no framing" --guidance_recipes \
        --ema_variants 0.999:0.6667 0.9999:0.75                                # README: Framing and EMA
"""

import argparse
import multiprocessing
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor

from common import REPO, machine_lines, markdown_table, run_in_work_folder

RECIPES = {  # name -> train_fairface.py flags
    "epsilon": ["--prediction_type", "epsilon", "--snr_gamma", "0"],
    "epsilon + min-SNR 5": ["--prediction_type", "epsilon", "--snr_gamma", "5"],
    "v-prediction + min-SNR 5": ["--prediction_type", "v_prediction", "--snr_gamma", "5"],
    # the same with the condition also added to the timestep embedding (not in the default list)
    "v-prediction + min-SNR 5, time embedding": ["--prediction_type", "v_prediction", "--snr_gamma", "5",
                                                 "--condition_in_time_embedding"],
    # the default with and without the framing condition (--demo: without; full-data runs: with)
    "v-prediction + min-SNR 5, framing": ["--prediction_type", "v_prediction", "--snr_gamma", "5",
                                          "--framing_condition"],
    "v-prediction + min-SNR 5, no framing": ["--prediction_type", "v_prediction", "--snr_gamma", "5",
                                             "--no-framing_condition"],
}
TRAINING_DEFAULT = "v-prediction + min-SNR 5"  # train_fairface.py's defaults
DEFAULT_RECIPES = ["epsilon", "epsilon + min-SNR 5", TRAINING_DEFAULT]
PROGRESS_GUIDANCE = 2.0  # every snapshot is evaluated at the samples' default guidance
LOOK_CONDITIONS = [0, 20, 42, 58, 73, 95, 110, 125]  # the EMA look grid's columns: every age band, both genders
TARGET_ALL, TARGET_GROUP_GAP = 0.90, 0.10


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipes", nargs="+", choices=list(RECIPES), default=DEFAULT_RECIPES)
    parser.add_argument("--epochs", type=int, default=5, help="Training budget in epochs of the demo data (the "
                        "demo trains 16; 5 keeps the default run under 15 minutes on a 2-core CPU).")
    parser.add_argument("--eval_every", type=int, default=5, help="Evaluate every this many epochs (at g=2).")
    parser.add_argument("--guidance_scales", type=float, nargs="+", default=[1.0, 2.0, 3.0])
    parser.add_argument("--guidance_recipes", nargs="*", choices=list(RECIPES), default=[TRAINING_DEFAULT],
                        help="Recipes whose final model is also sampled at every --guidance_scales (each "
                        "evaluation costs ~45 s on a 2-core CPU).")
    parser.add_argument("--seeds", type=int, default=1, help="Images per condition.")
    parser.add_argument("--num_inference_steps", type=int, default=None, help="Sampler steps (default: the model's "
                        "saved sampling default, 6; the recipe tables in README before it were measured at 25).")
    parser.add_argument("--num_images", type=int, default=2016, help="Size of the generated demo dataset.")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads (default: every "
                        "core; the time estimates above are for 2).")
    parser.add_argument("--jobs", type=int, default=1, help="Evaluations run at a time, each in its own process "
                        "with --threads threads (trainings run one after the other).")
    parser.add_argument("--work_dir", default=None, help="Keep data and runs here (default: a temporary folder, "
                        "deleted at the end).")
    parser.add_argument("--device", default="cpu", help="Where the evaluations sample (training: accelerate's "
                        "choice).")
    parser.add_argument("--ema_variants", nargs="*", default=[], help="DECAY:POWER EMAs (diffusers' warm-up) that "
                        "each run also keeps; every evaluated snapshot is evaluated with each of them too (one run "
                        "carries them all: EMA does not change the raw weights' trajectory).")
    parser.add_argument("--extra_train_args", nargs=argparse.REMAINDER, default=[],
                        help="Passed on to train_fairface.py (after the --demo defaults).")
    return parser.parse_args(argv)


def train(recipe, work, args):
    """Train one recipe (or reuse the finished run of the same recipe and budget in --work_dir)."""
    output = os.path.join(work, re.sub(r"[^a-z0-9]+", "_", recipe.lower()) + f"_{args.epochs}ep")
    command = [sys.executable, os.path.join(REPO, "train_fairface.py"), "--demo", "--dataset_name",
               os.path.join(work, "fairface"), "--preprocess_cache", os.path.join(work, "cache"), "--output_dir",
               output, "--num_epochs", str(args.epochs), "--save_model_epochs", str(args.eval_every),
               "--save_images_epochs", str(args.epochs), "--report_to", "none", *RECIPES[recipe],
               *(["--ema_variants", *args.ema_variants] if args.ema_variants else []), *args.extra_train_args]
    if os.path.isfile(os.path.join(output, "model_index.json")):
        return output, float("nan")
    start = time.perf_counter()
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
    if result.returncode:
        sys.exit(f"training {recipe} failed:\n{result.stderr[-3000:]}")
    return output, time.perf_counter() - start


def evaluate(model, guidance_scale, args, framing=None, keep_look=False):
    """Recovery rates of every condition x --seeds; with ``framing``, also the share drawn in that framing;
    ``keep_look``: also the LOOK_CONDITIONS' images (first seed), as rates["look"]."""
    import torch

    from utils.data.demo_data import measure_framing, recovery_rates
    from utils.labels import NUM_CONDITIONS, decode_condition, parse_framing
    from utils.model.pipeline import generate, load_pipeline

    torch.set_num_threads(args.threads)  # also in --jobs worker processes
    pipe = load_pipeline(model, device=args.device)
    conditions = [decode_condition(c) for c in range(NUM_CONDITIONS) for _ in range(args.seeds)]
    seeds = [1000 + i for i in range(len(conditions))]
    images = generate(pipe, conditions, seeds, batch_size=64, num_inference_steps=args.num_inference_steps,
                      guidance_scale=guidance_scale, framing=framing)
    rates = recovery_rates(images, conditions)
    if keep_look:
        rates["look"] = [images[c * args.seeds] for c in LOOK_CONDITIONS]
    drawn = measure_framing(images)
    rates["wide"] = float(drawn.mean())  # share drawn wide: how the model chooses when not asked
    if framing:
        rates["framing"] = float((drawn == parse_framing(framing)).mean())
    worst = min(rates["groups"], key=rates["groups"].get)
    mean = sum(rates["groups"].values()) / len(rates["groups"])
    rates.update(worst=worst, gap=mean - rates["groups"][worst])
    rates["met"] = rates["all"] >= TARGET_ALL and rates["gap"] <= TARGET_GROUP_GAP
    return rates


def row(label, rates):
    return [label, f"{rates['age']:.1%}", f"{rates['gender']:.1%}", f"{rates['race']:.1%}", f"{rates['all']:.1%}",
            f"{rates['worst']} {rates['groups'][rates['worst']]:.1%}", f"{rates['gap'] * 100:.1f}",
            "yes" if rates["met"] else "no"]


def framing_row(label, rates):
    return [label, f"{rates['framing']:.1%}", f"{rates['age']:.1%}", f"{rates['gender']:.1%}", f"{rates['race']:.1%}",
            f"{rates['all']:.1%}", f"{rates['gap'] * 100:.1f}"]


def save_look(path, rows, labels):
    """Side-by-side look of several models' evaluation images: one row each, the LOOK_CONDITIONS (first seed)."""
    from utils.grid import labelled_grid
    from utils.labels import describe_condition

    grid = labelled_grid([image for images in rows for image in images], len(rows),
                         len(LOOK_CONDITIONS), row_labels=labels,
                         col_labels=[describe_condition(c) for c in LOOK_CONDITIONS])
    grid.save(path)
    print(f"(wrote {path})", flush=True)


def main(args):
    run_in_work_folder(args, "fairface-bench-fidelity-", run_benchmark)


def run_benchmark(args, work):
    from utils.data.demo_data import make_demo_dataset

    if not os.path.isfile(os.path.join(work, "fairface", "README.md")):
        make_demo_dataset(os.path.join(work, "fairface"), num_images=args.num_images, resolution=64, seed=0)
    print("\n".join(["## Conditioning fidelity on the demo data", *machine_lines(args.device)]), flush=True)
    header = ["recipe / snapshot", "age", "gender", "race", "all three", "worst group", "gap (pts)", "target met"]
    framing_header = ["recipe / framing asked", "framing drawn", "age", "gender", "race", "all three", "gap (pts)"]
    # Train every recipe first, then evaluate everything (--jobs evaluations at a time), printing in order.
    runs = {recipe: train(recipe, work, args) for recipe in args.recipes}
    pool = ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) if args.jobs > 1 else None
    submit = (lambda *a, **k: pool.submit(evaluate, *a, **k)) if pool else (lambda *a, **k: _Done(evaluate(*a, **k)))
    plan = []  # (table, label, future, look file or None)
    for recipe, (output, _) in runs.items():
        steps_per_epoch = _steps_per_epoch(output, args.epochs)
        for epoch in range(args.eval_every, args.epochs + 1, args.eval_every):
            step = epoch * steps_per_epoch
            look = os.path.join(work, f"ema_look_{os.path.basename(output)}_step{step}.png")
            variants = sorted(v for v in os.listdir(output) if v.startswith(f"epoch_{epoch}_ema"))  # --ema_variants
            for folder in [f"epoch_{epoch}", *variants]:
                label = f"{recipe}, step {step}" + (f", {folder.split('_', 2)[2]}" if folder in variants else "")
                plan.append(("progress", label, submit(os.path.join(output, folder), PROGRESS_GUIDANCE, args,
                                                       keep_look=bool(variants)), look if variants else None))
        final = next(future for _, label, future, _ in reversed(plan) if ", ema" not in label)  # final raw weights
        for framing in ("tight", "wide") if _has_framing(output) else ():  # the final model asked for each
            plan.append(("framing", f"{recipe}, {framing}", submit(output, PROGRESS_GUIDANCE, args, framing), None))
        for guidance in args.guidance_scales if recipe in args.guidance_recipes else []:
            # the final snapshot at PROGRESS_GUIDANCE is evaluated above already: same model, seeds and sampler
            future = final if guidance == PROGRESS_GUIDANCE else submit(output, guidance, args)
            plan.append(("guidance", f"{recipe}, g={guidance:g}", future, None))
    tables, reached, looks = {"progress": [], "framing": [], "guidance": []}, {}, {}
    for table, label, future, look in plan:
        rates = future.result()
        if table == "framing":
            tables[table].append(framing_row(label, rates))
        else:
            tables[table].append(row(label + (f", g={PROGRESS_GUIDANCE:g}" if table == "progress" else ""), rates))
        if table == "progress" and rates["met"] and ", ema" not in label:
            recipe = next(r for r in runs if label.startswith(r + ", step"))
            reached.setdefault(recipe, int(label.rsplit("step ", 1)[1].split(",")[0]))
        if look:
            looks.setdefault(look, []).append((label.rsplit(", ", 1)[1] if ", ema" in label else "raw weights",
                                               rates["look"]))
        print(markdown_table(framing_header if table == "framing" else header, tables[table][-1:]).splitlines()[-1]
              + (f" (drawn wide: {rates['wide']:.0%})" if table == "progress" else ""), flush=True)
    if pool:
        pool.shutdown()
    for path, rows in looks.items():
        save_look(path, [images for _, images in rows], [name for name, _ in rows])
    for recipe, (output, seconds) in runs.items():
        print(f"({recipe}: {args.epochs * _steps_per_epoch(output, args.epochs)} steps, trained in {seconds:.0f} s"
              " (nan: reused from --work_dir))")

    steps = args.num_inference_steps or "saved default"
    print(f"\n### Recovery during training (DPM-Solver++, steps: {steps}, guidance {PROGRESS_GUIDANCE:g}, "
          f"{args.seeds} image(s) x 126 conditions)\n" + markdown_table(header, tables["progress"]))
    print("\n### Guidance scale, final model\n" + markdown_table(header, tables["guidance"]))
    if tables["framing"]:
        print(f"\n### Framing asked for, final model (g={PROGRESS_GUIDANCE:g})\n"
              + markdown_table(framing_header, tables["framing"]))
    print(f"\n### Steps to the target (all three >= {TARGET_ALL:.0%}, no group > {TARGET_GROUP_GAP * 100:.0f} "
          f"points below the mean, at g={PROGRESS_GUIDANCE:g})")
    for recipe in args.recipes:
        print(f"- {recipe}: " + (f"{reached[recipe]} steps" if recipe in reached else
                                 f"not reached within {args.epochs} epochs"))


class _Done:
    """An evaluation already run (--jobs 1), with the interface of a Future."""

    def __init__(self, value):
        self.value = value

    def result(self):
        return self.value


def _has_framing(model):
    import json

    with open(os.path.join(model, "condition_encoder", "config.json")) as f:
        return bool(json.load(f).get("framings"))


def _steps_per_epoch(output, epochs):
    """Optimizer steps per epoch of a finished run, from its last checkpoint's step count."""
    from utils.run.checkpoints import list_checkpoints

    return list_checkpoints(output)[-1][0] // epochs


if __name__ == "__main__":
    main(parse_args())
