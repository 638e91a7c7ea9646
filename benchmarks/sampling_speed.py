"""Sampling speed and fidelity: the pipeline (its default sampler settings) vs the seed's loop.

What it measures, on the same trained model, the same (condition, seed) pairs and the same starting noise:

* **pipeline**: ``utils.model.pipeline.generate`` with ``FairFacePipeline`` and the defaults that models trained now
  save (``utils.model.pipeline.SAMPLING_DEFAULTS``: DPM-Solver++, few steps, classifier-free guidance with the
  conditional and null predictions in one batched UNet call on the steps of its guidance interval, the
  conditional prediction alone on the others), 16 images per call;
* **seed loop**: the original project's sampler, one image at a time, no guidance, every one of the 1000
  DDPM steps: ``for t in reversed(range(1000)): pred = unet(x, t, cond).sample; x = scheduler.step(pred, t,
  x).prev_sample`` (a ``DDPMScheduler`` built from the model's own scheduler config).

Speed: images/s of each and their ratio. The variants run interleaved (pipeline batches spread between the
seed-loop images) in one process after an untimed warm-up, so machine load hits both alike. The seed loop is
slow, so it draws fewer images (``--seed_loop_images``); the throughput is per image.

Fidelity: the share of requested age / gender / race that ``utils.data.demo_data.measure_attributes`` (the demo
data's pixel "classifier") reads back from the images, for both samplers; the pipeline's is given on all its
images (every condition twice by default: 252) and on exactly the seed loop's (condition, seed) pairs.

The model: unless ``--model DIR`` names a trained pipeline, a tiny UNet is first trained for a fixed budget
(``--train_steps``) by running ``train_fairface.py`` on generated demo data (``utils.data.demo_data``, config "0.25"
only: 2016 faces of one layout), 32 px, like ``--demo``.

    python benchmarks/sampling_speed.py                       # trains 300 steps, then measures
    python benchmarks/sampling_speed.py --model fairface-demo # reuse a trained model (e.g. the --demo one)
"""

import argparse
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import REPO, end_run, machine_lines, markdown_table, start_run  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--model", default=None, help="A trained pipeline folder to reuse (skips training).")
    add("--work_dir", default=None, help="Keep generated data and the trained model here and reuse them on the "
        "next run; default: a temporary folder, deleted at the end.")
    add("--train_steps", type=int, default=300, help="Training budget of the tiny model (optimizer steps).")
    add("--train_batch_size", type=int, default=32)
    add("--resolution", type=int, default=32)
    add("--num_images", type=int, default=252, help="Pipeline images: all 126 conditions in turn (default: twice).")
    add("--seed_loop_images", type=int, default=16, help="Seed-loop images: the first pairs of the pipeline's.")
    add("--batch_size", type=int, default=16, help="Pipeline images per call.")
    add("--num_inference_steps", type=int, default=None, help="Default: utils.model.pipeline.SAMPLING_DEFAULTS.")
    add("--guidance_scale", type=float, default=None, help="Default: utils.model.pipeline.SAMPLING_DEFAULTS.")
    add("--guidance_interval", type=float, nargs=2, default=None, help="Guided timesteps LO HI ('0 inf': every "
        "step). Default: utils.model.pipeline.SAMPLING_DEFAULTS.")
    add("--scheduler", default="dpm++", help="Pipeline sampler (utils.model.pipeline.SCHEDULERS).")
    add("--seed_loop_steps", type=int, default=None, help="Seed-loop steps (default: all training timesteps, 1000).")
    add("--threads", type=int, default=1, help="torch threads for training and sampling; 1 avoids OpenMP stalls on a "
        "shared CPU; 0: torch's default.")
    add("--device", default=None, help="Default: cuda if available, else cpu.")
    return parser.parse_args(argv)


# ------------------------------------------------------------------------------------------ the model
def train_model(work, args):
    """Train the tiny model with train_fairface.py (a subprocess, as a user runs it); returns (folder, seconds)."""
    from utils.data.demo_data import make_demo_dataset

    output = os.path.join(work, f"model-{args.train_steps}steps-{args.resolution}px")
    if os.path.isfile(os.path.join(output, "model_index.json")):
        return output, None
    data = os.path.join(work, "fairface")
    if not os.path.isfile(os.path.join(data, "README.md")):
        make_demo_dataset(data, num_images=4032, resolution=64, seed=0)  # 2016 faces in config 0.25
    command = [sys.executable, os.path.join(REPO, "train_fairface.py"), "--dataset_name", data,
               "--dataset_config_names", "0.25", "--output_dir", output, "--resolution", str(args.resolution),
               "--block_out_channels", "32", "64", "64", "--layers_per_block", "1", "--cross_attention_dim", "64",
               "--train_batch_size", str(args.train_batch_size), "--max_train_steps", str(args.train_steps),
               "--learning_rate", "1e-3", "--lr_warmup_steps", "50", "--random_flip", "--preprocess_cache",
               os.path.join(work, "pixel-cache"), "--mixed_precision", "no", "--report_to", "none",
               "--save_model_epochs", "100000", "--save_images_epochs", "100000", "--checkpointing_steps", "100000"]
    print("training:", " ".join(command[1:]), flush=True)
    env = dict(os.environ)
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    start = time.perf_counter()
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    if result.returncode:
        sys.exit(f"training failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return output, time.perf_counter() - start


# ------------------------------------------------------------------------------------------ samplers
def seed_loop(pipe, condition, seed, steps=None):
    """The seed project's sampler: batch 1, no guidance, one UNet call per DDPM timestep (all 1000 of them)."""
    import numpy as np
    import torch
    from diffusers import DDPMScheduler
    from diffusers.utils.torch_utils import randn_tensor

    from utils.model.pipeline import conditions_to_tensor, denoise

    unet, device = pipe.unet, pipe.unet.device
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)  # the trained betas and prediction type
    generator = torch.Generator("cpu").manual_seed(int(seed))  # the pipeline's per-image noise for this seed
    size = unet.config.sample_size
    x = randn_tensor((1, unet.config.in_channels, size, size), generator=[generator], device=device)
    with torch.no_grad():
        cond = pipe.condition_encoder(conditions_to_tensor([condition]).to(device))
        if steps:  # fewer, evenly spaced steps (not the seed's loop; for quick checks only)
            scheduler.set_timesteps(steps, device=device)
            timesteps = scheduler.timesteps.tolist()
        else:
            timesteps = reversed(range(scheduler.config.num_train_timesteps))
        for t in timesteps:
            pred = denoise(unet, x, t, cond)  # the project's UNet call (cross-attention + time-embedding condition)
            x = scheduler.step(pred, t, x, generator=generator).prev_sample
    image = ((x.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1)[0].cpu().numpy()
    return (image * 255).round().astype(np.uint8)


def unet_batching(pipe, batches, device, repeats=5):
    """UNet forward time per image at batch 1 and at each of ``batches`` (alternating, median): what batching
    buys here. Returns {batch size: seconds per image}."""
    import statistics

    import torch

    from utils.model.pipeline import denoise

    unet, size = pipe.unet, pipe.unet.config.sample_size
    batch = max(batches)
    with torch.no_grad():
        tokens = pipe.condition_encoder(torch.zeros(batch, 3, dtype=torch.long, device=device))
    inputs = {n: (torch.randn(n, unet.config.in_channels, size, size, device=device), tokens[:n])
              for n in sorted({1, *batches})}
    cpu = device == "cpu"
    clock = time.process_time if cpu else time.perf_counter
    times = {n: [] for n in inputs}
    with torch.no_grad():
        for _ in range(repeats):
            for n, (x, cond) in inputs.items():
                start = clock()
                for _ in range(max(1, batch // n // 4)):
                    denoise(unet, x, 500, cond)
                if not cpu:
                    torch.cuda.synchronize()
                times[n].append((clock() - start) / max(1, batch // n // 4) / n)
    return {n: statistics.median(t) for n, t in times.items()}


def wilson(hits, total, z=1.96):
    """95 % Wilson score interval of a share: how far apart two fidelities must be to mean anything."""
    import math

    if not total:
        return float("nan"), float("nan")
    p = hits / total
    centre, half = p + z * z / (2 * total), z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total))
    return (centre - half) / (1 + z * z / total), (centre + half) / (1 + z * z / total)


def pooled(result):
    """Hits and checks over the three attributes together, with the 95 % interval, as text."""
    hits = sum(result[name][0] for name in ("age", "gender", "race"))
    total = sum(result[name][1] for name in ("age", "gender", "race"))
    low, high = wilson(hits, total)
    return f"{hits}/{total} = {hits / total:.0%} (95 % CI {low:.0%}-{high:.0%})"


def fidelity(images, conditions):
    """{attribute: (recovered, total)} and "all three" for images requested with ``conditions`` [(a, g, r)]."""
    from utils.data.demo_data import attribute_hits

    hits = attribute_hits(images, conditions)
    hits["all three"] = hits.pop("all")
    return {name: (int(h.sum()), len(h)) for name, h in hits.items()}


def main(args):
    work, device = start_run(args, "fairface-bench-sampling-")
    import numpy as np
    import torch

    from utils.labels import NUM_CONDITIONS, decode_condition
    from utils.model.pipeline import SAMPLING_DEFAULTS, generate, load_pipeline

    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.disable_progress_bar()
    try:
        train_seconds = None
        if args.model:
            model = args.model
        else:
            model, train_seconds = train_model(work, args)
        pipe = load_pipeline(model, device=device).set_scheduler(args.scheduler)
        pipe.set_progress_bar_config(disable=True)
        params = sum(p.numel() for p in pipe.unet.parameters())
        size = pipe.unet.config.sample_size
        print(f"model: {model} ({params / 1e6:.2f} M UNet parameters, {size} px"
              + (f", trained in {train_seconds:.0f} s" if train_seconds else ", reused") + ")", flush=True)

        rng = np.random.default_rng(0)
        condition_ids = np.resize(rng.permutation(NUM_CONDITIONS), args.num_images)  # each condition in turn
        conditions = [decode_condition(int(c)) for c in condition_ids]
        seeds = list(range(args.num_images))
        n_seed = min(args.seed_loop_images, args.num_images)
        given = dict(num_inference_steps=args.num_inference_steps, guidance_scale=args.guidance_scale,
                     guidance_interval=args.guidance_interval)
        call = pipe.sampling_settings(**{**SAMPLING_DEFAULTS, **{k: v for k, v in given.items() if v is not None}})
        evaluated = {"pipeline": 0}  # images through the UNet, counted by a forward hook
        pipe.unet.register_forward_pre_hook(lambda module, inputs: evaluated.__setitem__(
            "pipeline", evaluated["pipeline"] + len(inputs[0])))

        # Untimed warm-up of both code paths (allocator, first-call overheads).
        generate(pipe, conditions[: args.batch_size], seeds[: args.batch_size], batch_size=args.batch_size,
                 **dict(call, num_inference_steps=2))
        seed_loop(pipe, conditions[0], seeds[0], steps=5)
        evaluated["pipeline"] = 0

        # Interleave: pipeline batches spread evenly between the seed-loop images.
        batches = [slice(s, s + args.batch_size) for s in range(0, args.num_images, args.batch_size)]
        plan = sorted([((i + 0.5) / len(batches), "pipeline", b) for i, b in enumerate(batches)] +
                      [((i + 0.5) / n_seed, "seed", i) for i in range(n_seed)], key=lambda item: item[0])
        pipeline_images, seed_images = [None] * args.num_images, [None] * n_seed
        seconds = {"pipeline": 0.0, "seed": 0.0}  # wall clock
        cpu_seconds = {"pipeline": 0.0, "seed": 0.0}  # this process's CPU time: robust to other jobs' load
        for _, kind, what in plan:
            start, cpu_start = time.perf_counter(), time.process_time()
            if kind == "pipeline":
                pipeline_images[what] = generate(pipe, conditions[what], seeds[what], batch_size=args.batch_size,
                                                 **call)
            else:
                before = evaluated["pipeline"]  # the seed loop's UNet calls are not the pipeline's
                seed_images[what] = seed_loop(pipe, conditions[what], seeds[what], args.seed_loop_steps)
                evaluated["pipeline"] = before
            if device != "cpu":
                torch.cuda.synchronize()
            seconds[kind] += time.perf_counter() - start
            cpu_seconds[kind] += time.process_time() - cpu_start
            if kind == "seed":
                print(f"seed loop image {what + 1}/{n_seed}: {time.perf_counter() - start:.1f} s", flush=True)

        rate = {"pipeline": args.num_images / seconds["pipeline"], "seed": n_seed / seconds["seed"]}
        cpu_ratio = (cpu_seconds["seed"] / n_seed) / (cpu_seconds["pipeline"] / args.num_images)
        evals = evaluated["pipeline"] / args.num_images  # UNet image-evaluations per image
        batching = unet_batching(pipe, [args.batch_size, 2 * args.batch_size], device)
        fid = {"pipeline": fidelity(pipeline_images, conditions),
               "pipeline_same": fidelity(pipeline_images[:n_seed], conditions[:n_seed]),
               "seed": fidelity(seed_images, conditions[:n_seed])}

        def share(result, name):
            hits, total = result[name]
            return f"{hits / total:.0%} ({hits}/{total})"

        seed_steps = args.seed_loop_steps or pipe.scheduler.config.num_train_timesteps
        interval = call["guidance_interval"]
        rows = [
            [f"seed loop: DDPM {seed_steps} steps, batch 1, guidance 1", n_seed, f"{1 / rate['seed']:.2f} s",
             f"{rate['seed']:.3g}", "1x"] + [share(fid["seed"], k) for k in ("age", "gender", "race", "all three")],
            [f"pipeline: {args.scheduler} {call['num_inference_steps']} steps, batch {args.batch_size}, batched CFG "
             f"{call['guidance_scale']:g} " + (f"on timesteps {interval[0]:g}-{interval[1]:g}" if interval else
                                               "on every step") + f" ({evals:g} UNet evals/image)", args.num_images, f"{1 / rate['pipeline']:.3f} s", f"{rate['pipeline']:.3g}",
             f"**{rate['pipeline'] / rate['seed']:.3g}x**"] + [share(fid["pipeline"], k)
                                                             for k in ("age", "gender", "race", "all three")],
            [f"pipeline, the seed loop's {n_seed} (condition, seed) pairs", n_seed, "", "", ""]
            + [share(fid["pipeline_same"], k) for k in ("age", "gender", "race", "all three")],
        ]
        print()
        print(f"## Sampling: pipeline vs seed loop ({size} px, {params / 1e6:.2f} M-parameter UNet, "
              f"{'trained ' + str(args.train_steps) + ' steps here' if not args.model else model})")
        print()
        print(markdown_table(["sampler", "images", "time/image", "images/s", "speed-up", "age", "gender", "race",
                              "all three"], rows))
        print()
        print(f"Interleaved in one process after a warm-up; same conditions, seeds and starting noise for both. "
              f"Fidelity: share of requested attributes that utils.data.demo_data.measure_attributes reads back. "
              f"Seed loop {seconds['seed']:.0f} s for {n_seed} images, pipeline {seconds['pipeline']:.1f} s for "
              f"{args.num_images} (wall clock).")
        print(f"Fidelity pooled over age, gender and race on the same {n_seed} (condition, seed) pairs: seed loop "
              f"{pooled(fid['seed'])}, pipeline {pooled(fid['pipeline_same'])}; pipeline on all {args.num_images}: "
              f"{pooled(fid['pipeline'])}. Chance: age 11 %, gender 50 %, race 14 %.")
        if device == "cpu":
            print(f"Speed-up in process CPU time (insensitive to other jobs on a shared CPU): **{cpu_ratio:.3g}x**.")
        clock = "process CPU time" if device == "cpu" else "wall clock"
        gain = batching[1] / batching[2 * args.batch_size]
        print(f"Where it comes from: {seed_steps / evals:.3g}x fewer UNet image-evaluations per image ({evals:g} vs "
              f"{seed_steps}), x up to {gain:.2f} from batching (UNet time per image: "
              + ", ".join(f"{t * 1000:.1f} ms at batch {n}" for n, t in batching.items()) + f", {clock}). "
              "Guided steps run a batch twice as large as the unguided ones, which batches a little better on a "
              "CPU; on a GPU a batch of small images costs about as much as one, so batching gains far more there.")
        print()
        print("\n".join(machine_lines(device)))
    finally:
        end_run(args, work)


if __name__ == "__main__":
    main(parse_args())
