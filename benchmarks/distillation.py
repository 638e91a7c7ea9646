"""Distilled student vs its teacher, side by side in one run, at the same UNet evaluations per image.

For the teacher and each student (``--teacher``, ``--students``: pipeline folders, or a distillation run's
``checkpoint-N/`` folders for a training-length curve) it samples each of ``--conditions`` (all 126 by default)
``--seeds_per_condition`` times, all settings interleaved batch by batch on the same noise
(benchmarks/sampler_sweep.py's ``sample_interleaved``), and prints per setting:

* **UNet evals/image** (counted by a forward hook) and **all three** attributes read back by
  ``utils.data.demo_data.measure_attributes`` (95 % Wilson interval), each attribute, and the **worst group** (age
  group, gender or race whose all-three share is lowest) with its distance below the mean;
* **distance to real images**: the Fréchet distance between the generated images and as many freshly drawn demo
  faces of the same conditions (``utils.data.demo_data.draw_face``: the training distribution itself), on 16x16
  pixels (768 dimensions; no pretrained feature network can be downloaded here), and the **sharpness** (mean
  absolute Laplacian) relative to the drawn faces: blur shows as < 1;
* **images/s** in wall-clock and CPU time, relative to the teacher's saved default (12 evaluations), and images/s
  of the seed project's loop (1000 DDPM steps, batch 1) on ``--seed_loop_images`` images;
* the distillation's cost, from each student's checkpoint (steps, wall seconds) and, with ``--teacher_log``,
  the teacher's training time.

Settings: the teacher at 1 (one unguided DPM-Solver++ step), 2 (one guided step), 4 (two guided steps) and
its default 12 evaluations; each student at 1, 2, 3 and 4 steps (``--student_steps``) of its own saved sampler (DDIM
through the segment starts for a multistep consistency student, the default; LCM's for --num_segments 1; the
teacher's DPM-Solver++ for a guidance-distilled student), one evaluation each.

    python benchmarks/distillation.py --teacher fairface-demo --students fairface-demo-distilled --threads 1
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import machine_lines, markdown_table, offline_environment  # noqa: E402
from sampler_sweep import sample_interleaved, wilson  # noqa: E402

TEACHER_SETTINGS = [("teacher, its default", {}), ("teacher, 1 step, no guidance", dict(num_inference_steps=1,
                    guidance_scale=1.0)), ("teacher, 1 step", dict(num_inference_steps=1)),
                    ("teacher, 2 steps", dict(num_inference_steps=2))]
STUDENT_STEPS = [1, 2, 3, 4]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--teacher", required=True, help="The teacher's pipeline folder.")
    add("--students", nargs="+", required=True, help="Students distilled from it (distill_fairface.py outputs or "
        "their checkpoint-N/ folders).")
    add("--conditions", nargs="+", default=["all"], metavar="ID", help="Condition ids, ranges such as 0-13, or "
        "'all' (default: all 126; fewer for a quick look, as the tests do).")
    add("--seeds_per_condition", type=int, default=2, help="Images per condition.")
    add("--batch_size", type=int, default=16)
    add("--seed_loop_images", type=int, default=2, help="Images drawn with the seed project's 1000-step loop.")
    add("--student_steps", type=int, nargs="+", default=STUDENT_STEPS,
        help="Each student's sampler steps to measure (default: %(default)s).")
    add("--threads", type=int, default=1, help="torch threads; 1 keeps CPU time comparable on a shared CPU.")
    add("--device", default="cpu")
    args = parser.parse_args(argv)
    from utils.model.conditions import parse_condition_ids

    try:
        args.conditions = parse_condition_ids(args.conditions)
    except ValueError as error:
        parser.error(str(error))
    return args


def pixel_features(images):
    """float images (N, H, W, 3) in [0, 1] -> 16x16 box-averaged pixels, flattened (N, 768)."""
    import numpy as np

    images = np.asarray(images, dtype=np.float64)
    n, h, w, c = images.shape
    return images.reshape(n, 16, h // 16, 16, w // 16, c).mean(axis=(2, 4)).reshape(n, -1)


def sharpness(images):
    """Mean absolute 4-neighbour Laplacian of the grey image."""
    import numpy as np

    grey = np.asarray(images, dtype=np.float64).mean(axis=-1)
    centre = grey[:, 1:-1, 1:-1]
    laplacian = 4 * centre - grey[:, :-2, 1:-1] - grey[:, 2:, 1:-1] - grey[:, 1:-1, :-2] - grey[:, 1:-1, 2:]
    return float(np.abs(laplacian).mean())


def real_faces(conditions, resolution, seed=12345):
    """A drawn demo face per condition (both layouts, as the training data), float in [0, 1]."""
    import numpy as np

    from utils.data.demo_data import CONFIG_ZOOM, draw_face

    rng = np.random.default_rng(seed)
    zooms = list(CONFIG_ZOOM.values())
    return [np.asarray(draw_face(*c, rng, resolution=resolution, zoom=zooms[i % 2]), dtype=np.float64) / 255
            for i, c in enumerate(conditions)]


def is_checkpoint(student):
    return os.path.isdir(os.path.join(student, "unet_target"))


def load_student(student, teacher, device):
    """A student release, or a run's checkpoint-N/ (released or not): the teacher's condition encoder, that
    checkpoint's target weights and the sampler its run record names, as distill_fairface.py would release it."""
    from diffusers import UNet2DConditionModel

    from distill_fairface import RECORD_ABSENT, student_pipeline
    from utils.run.checkpoints import read_training_state
    from utils.model.pipeline import load_pipeline
    from utils.hub.student_card import teacher_identity

    if not is_checkpoint(student):
        return load_pipeline(student, device=device)
    record = {**RECORD_ABSENT, **read_training_state(student)["run"]}
    if record["teacher_weights"] != teacher_identity(teacher)["weights_sha256"]:
        sys.exit(f"distillation.py: error: {student} was distilled from another teacher than {teacher}")
    teacher_pipe = load_pipeline(teacher, device=device)
    weights = UNet2DConditionModel.from_pretrained(student, subfolder="unet_target", use_safetensors=True)
    return student_pipeline(weights.to(device), teacher_pipe.condition_encoder, teacher_pipe.scheduler,
                            argparse.Namespace(**record))


def student_name(student):
    parts = os.path.normpath(student).split(os.sep)
    return "/".join(parts[-2:]) if is_checkpoint(student) else parts[-1]


def distillation_cost(student):
    """(steps, wall seconds) of a student's run, from its newest checkpoint (or the checkpoint itself)."""
    from utils.run.checkpoints import list_checkpoints, read_training_state

    found = [(None, student)] if is_checkpoint(student) else list_checkpoints(student)
    if not found:
        return None, None
    state = read_training_state(found[-1][1])
    return state["global_step"], state.get("train_seconds")


def main(args):
    offline_environment()
    import torch
    from diffusers.utils import logging as diffusers_logging

    from sampling_speed import seed_loop
    from utils.data.demo_data import attribute_hits, recovery_rates
    from utils.evaluation.frechet import frechet_distance_between
    from utils.labels import NUM_CONDITIONS, decode_condition
    from utils.model.pipeline import load_pipeline

    torch.set_num_threads(args.threads)
    diffusers_logging.disable_progress_bar()
    started = time.perf_counter()
    teacher = load_pipeline(args.teacher, device=args.device)
    pipes, defaults = {label: (teacher, call) for label, call in TEACHER_SETTINGS}, {}
    for student in args.students:
        pipe, name = load_student(student, args.teacher, args.device), student_name(student)
        defaults[student] = pipe.config.sampling_defaults
        pipes.update({f"{name}, {n} step{'s' * (n > 1)}": (pipe, dict(num_inference_steps=n))
                      for n in args.student_steps})
    pairs = [(c, 1000 + k * NUM_CONDITIONS + c) for k in range(args.seeds_per_condition) for c in args.conditions]
    conditions, seeds = [decode_condition(c) for c, _ in pairs], [s for _, s in pairs]
    images, cpu, wall, evals = sample_interleaved(pipes, conditions, seeds, args.batch_size, args.device)

    real = real_faces(conditions, teacher.unet.config.sample_size)
    real_features, real_sharpness = pixel_features(real), sharpness(real)
    seed_start = time.perf_counter()
    for i in range(args.seed_loop_images):
        seed_loop(teacher, conditions[i], seeds[i])
    seed_rate = args.seed_loop_images / (time.perf_counter() - seed_start)

    n, reference = len(pairs), TEACHER_SETTINGS[0][0]
    rows = []
    for label in pipes:
        uint8 = [(image * 255).round().astype("uint8") for image in images[label]]
        hits, rates = attribute_hits(uint8, conditions), recovery_rates(uint8, conditions)
        every = int(hits["all"].sum())
        low, high = wilson(every, n)
        worst = min(rates["groups"], key=rates["groups"].get)
        rate = n / wall[label]
        rows.append([label, f"{evals[label] / n:g}", f"**{every / n:.1%}**", f"{low:.0%}-{high:.0%}"]
                    + [f"{hits[a].mean():.1%}" for a in ("age", "gender", "race")]
                    + [f"{worst} {rates['groups'][worst]:.1%} ({100 * (rates['groups'][worst] - every / n):+.1f})",
                       f"{frechet_distance_between(pixel_features(images[label]), real_features):.2f}",
                       f"{sharpness(images[label]) / real_sharpness:.2f}", f"{rate:.1f}",
                       f"{cpu[reference] / cpu[label]:.2f}x", f"{wall[reference] / wall[label]:.2f}x",
                       f"{rate / seed_rate:,.0f}x"])
    header = ["setting", "UNet evals/image", "all three", "95 % CI", "age", "gender", "race", "worst group (vs mean)",
              "Fréchet (16x16 px)", "sharpness vs real", "images/s (wall)", "speed vs teacher default (CPU)",
              "(wall)", "vs seed loop"]
    print(f"\n## Distillation: {args.teacher} ({len(args.conditions)} conditions x {args.seeds_per_condition} seeds, "
          f"batch {args.batch_size}, {args.device}, {args.threads} thread(s))\n")
    print(markdown_table(header, rows))
    floor = frechet_distance_between(pixel_features(real_faces(conditions, teacher.unet.config.sample_size, 1)),
                                     real_features)
    print(f"\nSeed loop (1000 DDPM steps, batch 1, no guidance): {seed_rate:.4f} images/s on "
          f"{args.seed_loop_images} images. Fréchet floor (a second draw of demo faces of the same conditions): "
          f"{floor:.2f}.")
    for student in args.students:
        steps, seconds = distillation_cost(student)
        print(f"Distillation cost of {student}: {steps} steps, {seconds or 0:.0f} s wall; sampling defaults "
              f"{defaults[student]}")
    print(f"{time.perf_counter() - started:.0f} s in all.")
    print("\n".join(machine_lines(args.device)))


if __name__ == "__main__":
    main(parse_args())
