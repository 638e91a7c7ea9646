"""Sample faces from a trained fairface-diffusion pipeline, by condition id or by attributes.

    python sample_fairface.py --condition 42                                 # 4 faces, "20-29 Male East Asian"
    python sample_fairface.py --condition all --num_images 1 --grid          # one face per condition + grid.png
    python sample_fairface.py --gender female --race black --seeds 0-7,12   # age left to the model
    python sample_fairface.py --model user/repo --condition 0-13 --scheduler unipc --num_inference_steps 20

Conditions are ids 0-125 (age*14 + gender*7 + race; `all` for every one) or attributes --age/--gender/--race,
where a left-out attribute is unknown and drawn by the model. Image k of a condition uses seed k (or the
--seeds list), with its own generator: a seed gives the same image whatever else is in the batch and
whatever --batch_size (across batch sizes up to float rounding, at most 1/255 here on CPU).
--framing tight|wide asks a model trained with framing for close-ups (FairFace's 0.25 crops) or wider margins
(1.25); left out, the model chooses.
Files: cond042_20-29_male_east-asian_seed0003.png (by id), anyage_female_black_seed0000.png (by attributes),
cond042_20-29_male_east-asian_wide_seed0003.png (with --framing).
--grid adds grid.png: rows = conditions, columns = seeds.
"""

import argparse
import os

from utils.cli import DEFAULT_MODEL_DIR, fail, parse_seeds, positive_int
from utils.model.conditions import (add_condition_args, add_framing_arg, add_sampling_args, conditions_from_args,
                                    framing_or_exit, load_pipeline_or_exit, resolve_device_dtype, sample_filename,
                                    sampling_settings)
from utils.grid import labelled_grid
from utils.model.pipeline import generate


def parse_args(input_args=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL_DIR,
                        help="Pipeline folder (train_fairface.py --output_dir, or one of its epoch_{E}/ snapshots) "
                             "or Hub repo id user/repo (default: %(default)s).")
    add_condition_args(parser)
    add_framing_arg(parser)
    seeds = parser.add_argument_group("images").add_mutually_exclusive_group()
    seeds.add_argument("--num_images", type=positive_int, default=4,
                       help="Images per condition, seeds 0..N-1 (default: %(default)s).")
    seeds.add_argument("--seeds", type=parse_seeds, default=None,
                       help="Seeds per condition instead, e.g. 0-7,12 (one image per seed).")
    add_sampling_args(parser, batch_size=16)
    out = parser.add_argument_group("output")
    out.add_argument("--output_dir", default="samples", help="Where the PNGs go (default: %(default)s/).")
    out.add_argument("--grid", action="store_true", help="Also write grid.png: rows = conditions, columns = seeds.")

    args = parser.parse_args(input_args)
    # One-line errors (exit 2) that name the valid values, before any model is loaded.
    try:
        args.conditions = conditions_from_args(args)
        args.device, args.torch_dtype = resolve_device_dtype(args.device, args.dtype)
    except ValueError as error:
        fail(str(error), prog=parser.prog)
    args.seeds = list(dict.fromkeys(args.seeds)) if args.seeds is not None else list(range(args.num_images))
    return args


def main(args):
    # Model: local folder or Hub id, safetensors only; the sampler is swapped in by name, else the saved one.
    pipe = load_pipeline_or_exit(args.model, device=args.device, dtype=args.torch_dtype, scheduler=args.scheduler)
    framing = framing_or_exit(pipe, args.framing, args.model)
    settings = sampling_settings(pipe, args)  # flags given, else the model's saved defaults
    interval = settings["guidance_interval"]

    # Sample: every (condition, seed) pair, condition-major, one CPU generator per image.
    pairs = [(condition, seed) for condition in args.conditions for seed in args.seeds]
    print(f"sampling {len(pairs)} images ({len(args.conditions)} conditions x {len(args.seeds)} seeds) with "
          f"{type(pipe.scheduler).__name__}, {settings['num_inference_steps']} steps, guidance "
          f"{settings['guidance_scale']:g} " + (f"on timesteps {interval[0]:g}-{interval[1]:g}" if interval else
                                                  "on every step") + f", on {args.device}"
          + (f", {framing} framing" if framing else ""))
    images = generate(pipe, [c.attributes for c, _ in pairs], [s for _, s in pairs], batch_size=args.batch_size,
                      progress=True, framing=framing, **settings)

    # Save: names carry the condition and the seed, so any image can be redrawn on its own.
    os.makedirs(args.output_dir, exist_ok=True)
    paths = [os.path.join(args.output_dir, sample_filename(c, s, framing)) for c, s in pairs]
    for image, path in zip(images, paths):
        image.save(path)
    print(f"wrote {len(paths)} images to {args.output_dir}/ (e.g. {os.path.basename(paths[0])})")

    if args.grid:
        grid = labelled_grid(images, len(args.conditions), len(args.seeds),
                             row_labels=[c.label + (f", {framing}" if framing else "") for c in args.conditions],
                             col_labels=[f"seed {s}" for s in args.seeds])
        grid_path = os.path.join(args.output_dir, "grid.png")
        grid.save(grid_path)
        print(f"wrote {grid_path} ({len(args.conditions)} rows x {len(args.seeds)} columns)")
    return paths


if __name__ == "__main__":
    main(parse_args())
