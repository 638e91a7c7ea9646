"""Sampler sweep: the fewest UNet evaluations per image at which the demo models keep their fidelity.

For each model (``--models``, trained pipeline folders) and each sampler setting (``--settings``), it samples
every one of the 126 conditions ``--seeds_per_condition`` times and prints:

* **UNet evals/image**: images pushed through the UNet per image drawn, counted by a forward hook (a guided
  step costs 2, an unguided one 1);
* **fidelity**: the share of images whose age, gender and race ``utils.data.demo_data.measure_attributes`` all
  reads back (with its 95 % Wilson interval), and each attribute on its own;
* **speed**: images/s relative to the first setting (by default the pipeline's old default, DPM-Solver++
  25 steps with guidance on every step), in this process's CPU time and in wall-clock time.

All settings sample the same (condition, seed) pairs from the same starting noise, batch by batch in turn
(batch 1 of every setting, then batch 2, ...), so machine load hits them alike.

A setting is ``SAMPLER@STEPS`` plus optional ``,g=SCALE`` (guidance scale, default 2) and ``,i=LO-HI``
(guidance only on steps whose timestep lies in [LO, HI]; default every step), e.g. ``dpm++@10,i=300-999``.
SAMPLER is a key of ``VARIANTS``: a scheduler of ``utils.model.pipeline.SCHEDULERS`` with config options.

    python benchmarks/sampler_sweep.py --models fairface-demo other-demo-model
    python benchmarks/sampler_sweep.py --models fairface-demo --settings "dpm++@25" "unipc@10" "dpm++@10,i=300-999"
"""

import argparse
import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import machine_lines, markdown_table, offline_environment  # noqa: E402

# Sampler variants: (scheduler name in utils.model.pipeline.SCHEDULERS, scheduler config overrides).
VARIANTS = {
    "dpm++": ("dpm++", {}),
    "dpm++ order 3": ("dpm++", {"solver_order": 3}),
    "dpm++ karras": ("dpm++", {"use_karras_sigmas": True}),
    "dpm++ trailing": ("dpm++", {"timestep_spacing": "trailing"}),
    "dpm++ lu": ("dpm++", {"use_lu_lambdas": True}),
    "dpm++ sigma_min": ("dpm++", {"final_sigmas_type": "sigma_min"}),
    "dpm++ sde": ("dpm++", {"algorithm_type": "sde-dpmsolver++"}),
    "unipc": ("unipc", {}),
    "unipc order 3": ("unipc", {"solver_order": 3}),
    "unipc karras": ("unipc", {"use_karras_sigmas": True}),
    "unipc trailing": ("unipc", {"timestep_spacing": "trailing"}),
}
DEFAULT_SETTINGS = [
    "dpm++@25",  # the old default: the reference for the speed ratios
    "dpm++@15", "dpm++@12", "dpm++@10", "dpm++@8",
    "dpm++ order 3@10", "dpm++ karras@10", "dpm++ trailing@10", "dpm++ lu@10",
    "unipc@10", "unipc@8", "unipc order 3@8",
    "dpm++@10,g=1",  # no guidance at all: what guidance buys
    "dpm++@10,i=500-999", "dpm++@10,i=0-500", "dpm++@10,i=250-750", "dpm++@10,i=700-999",
    "dpm++@12,i=500-999", "dpm++@10,g=3,i=500-999", "unipc@8,i=500-999",
]
SETTING = re.compile(r"(?P<sampler>[^@]+)@(?P<steps>\d+)(?:,g=(?P<g>[\d.]+))?(?:,i=(?P<lo>[\d.]+)-(?P<hi>[\d.]+|inf))?")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--models", nargs="+", required=True, help="Trained pipeline folders (e.g. train_fairface.py --demo's).")
    add("--settings", nargs="+", default=DEFAULT_SETTINGS, help="SAMPLER@STEPS[,g=SCALE][,i=LO-HI]; the first "
        "is the speed reference (default: %(default)s).")
    add("--seeds_per_condition", type=int, default=2, help="Images per condition (126 conditions).")
    add("--batch_size", type=int, default=16)
    add("--threads", type=int, default=1, help="torch threads; 1 keeps CPU time comparable on a shared CPU.")
    add("--device", default="cpu")
    args = parser.parse_args(argv)
    for spec in args.settings:
        match = SETTING.fullmatch(spec)
        if not match or match["sampler"] not in VARIANTS:
            parser.error(f"bad setting {spec!r}: SAMPLER@STEPS[,g=SCALE][,i=LO-HI], SAMPLER one of "
                         f"{', '.join(VARIANTS)}")
    return args


def setting_call(spec):
    """'dpm++ karras@10,g=2,i=500-999' -> (scheduler name, scheduler options, pipeline call kwargs)."""
    match = SETTING.fullmatch(spec)
    name, options = VARIANTS[match["sampler"]]
    interval = (float(match["lo"]), float(match["hi"])) if match["lo"] else None
    return name, options, dict(num_inference_steps=int(match["steps"]), guidance_scale=float(match["g"] or 2.0),
                               guidance_interval=interval or (0.0, float("inf")))


def wilson(hits, total, z=1.96):
    """95 % Wilson score interval of a share."""
    p = hits / total
    centre, half = p + z * z / (2 * total), z * (p * (1 - p) / total + z * z / (4 * total * total)) ** 0.5
    return (centre - half) / (1 + z * z / total), (centre + half) / (1 + z * z / total)


def sweep(model, args):
    """One model: every setting on the same images, interleaved batch by batch. Returns table rows."""
    from utils.data.demo_data import attribute_hits
    from utils.labels import NUM_CONDITIONS, decode_condition
    from utils.model.pipeline import FairFacePipeline, load_pipeline

    base = load_pipeline(model, device=args.device)
    pipes = {}
    for spec in args.settings:
        name, options, call = setting_call(spec)
        pipe = FairFacePipeline(base.unet, base.scheduler, base.condition_encoder).set_scheduler(name, **options)
        pipes[spec] = (pipe, call)
    pairs = [(c, 1000 + k * NUM_CONDITIONS + c) for k in range(args.seeds_per_condition) for c in range(NUM_CONDITIONS)]
    conditions, seeds = [decode_condition(c) for c, _ in pairs], [s for _, s in pairs]
    images, cpu, wall, evals = sample_interleaved(pipes, conditions, seeds, args.batch_size, args.device)

    reference = args.settings[0]
    rows = []
    for spec in pipes:
        hits = attribute_hits([(image * 255).round().astype("uint8") for image in images[spec]], conditions)
        n, every = len(pairs), int(hits["all"].sum())
        low, high = wilson(every, n)
        rows.append([spec, f"{evals[spec] / n:g}", f"**{every / n:.1%}** ({every}/{n})", f"{low:.0%}-{high:.0%}"]
                    + [f"{hits[a].mean():.1%}" for a in ("age", "gender", "race")]
                    + [f"{cpu[reference] / cpu[spec]:.2f}x", f"{wall[reference] / wall[spec]:.2f}x"])
    return rows


def sample_interleaved(pipes, conditions, seeds, batch_size, device="cpu"):
    """{label: (pipeline, call kwargs)} on the same (condition, seed) pairs, batch by batch in turn, so machine
    load hits them alike. Returns per label: images (float arrays), CPU seconds, wall seconds, UNet evaluations
    (images through the UNet, counted by a forward hook on each pipeline's UNet)."""
    import torch

    from utils.model.pipeline import generate

    evaluated = [0]
    for unet in {id(pipe.unet): pipe.unet for pipe, _ in pipes.values()}.values():
        unet.register_forward_pre_hook(lambda module, inputs: evaluated.__setitem__(0, evaluated[0] + len(inputs[0])))
    for pipe, call in pipes.values():  # untimed warm-up
        generate(pipe, conditions[:batch_size], seeds[:batch_size], batch_size, **dict(call, num_inference_steps=2))
    images = {label: [] for label in pipes}
    cpu, wall, evals = dict.fromkeys(pipes, 0.0), dict.fromkeys(pipes, 0.0), dict.fromkeys(pipes, 0)
    for start in range(0, len(seeds), batch_size):
        chunk = slice(start, start + batch_size)
        for label, (pipe, call) in pipes.items():
            evaluated[0], cpu_start, wall_start = 0, time.process_time(), time.perf_counter()
            images[label] += generate(pipe, conditions[chunk], seeds[chunk], batch_size, output_type="np", **call)
            if device != "cpu":
                torch.cuda.synchronize()
            cpu[label] += time.process_time() - cpu_start
            wall[label] += time.perf_counter() - wall_start
            evals[label] += evaluated[0]
        print(f"  {min(start + batch_size, len(seeds))}/{len(seeds)} images per setting", flush=True)
    return images, cpu, wall, evals


def main(args):
    offline_environment()
    import torch

    torch.set_num_threads(args.threads)
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.disable_progress_bar()
    started = time.perf_counter()
    header = ["setting", "UNet evals/image", "all three", "95 % CI", "age", "gender", "race",
              f"speed vs {args.settings[0]} (CPU time)", "(wall)"]
    tables = []
    for model in args.models:
        print(f"model {model}: {len(args.settings)} settings x {126 * args.seeds_per_condition} images", flush=True)
        tables.append((model, sweep(model, args)))
    for model, rows in tables:
        print(f"\n## Sampler sweep: {model} (126 conditions x {args.seeds_per_condition} seeds, batch "
              f"{args.batch_size}, {args.device})\n")
        print(markdown_table(header, rows))
    print(f"\nGuidance scale 2 unless g= says otherwise; i=LO-HI: guidance only on steps with LO <= timestep <= HI. "
          f"Settings interleaved batch by batch in one process; {time.perf_counter() - started:.0f} s in all.")
    print("\n".join(machine_lines(args.device)))


if __name__ == "__main__":
    main(parse_args())
