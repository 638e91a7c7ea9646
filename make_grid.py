"""Labelled grids of samples: training progress across epochs, or the 126-condition atlas of one model.

    python make_grid.py --run_dir fairface-diffusion-128 --epochs 10 20 30 --conditions 0 1 2 3 --output grid.png
    python make_grid.py --atlas --model fairface-diffusion-128 --output assets/atlas.png

Epochs: rows = the epoch_{E}/ snapshots that train_fairface.py wrote under --run_dir (--epochs, default all,
in numeric order), columns = --conditions. Every tile starts from the same noise (--seed), so a column shows
what training changed and a row what the condition changes. Atlas: 9 rows (ages) x 14 columns (gender x race),
i.e. condition id = row * 14 + column, again from one seed. Models trained with framing draw every tile
wide (--framing, "any" = the model's choice per tile), so tiles differ only by what the grid compares.
"""

import argparse
import os
import re

from tqdm.auto import tqdm

from utils.cli import DEFAULT_MODEL_DIR, fail
from utils.model.conditions import (GRID_FRAMING, add_framing_arg, add_sampling_args, framing_or_exit,
                                    load_pipeline_or_exit, parse_condition_ids, resolve_device_dtype,
                                    sampling_settings)
from utils.grid import atlas_grid, labelled_grid
from utils.labels import NUM_CONDITIONS, decode_condition, describe_condition
from utils.model.pipeline import generate


def parse_args(input_args=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--run_dir", default=DEFAULT_MODEL_DIR, help="train_fairface.py --output_dir with epoch_{E}/ snapshots.")
    add("--epochs", type=int, nargs="+", default=None, help="Snapshots to show, one row each (default: all).")
    add("--conditions", nargs="+", default=None, help="Columns: ids, ranges (0-13) or 'all' (default: 0 1 2 3).")
    add("--atlas", action="store_true", help="Instead: all 126 conditions of --model, ages x (gender, race).")
    add("--model", default=DEFAULT_MODEL_DIR, help="Pipeline folder or Hub repo id for --atlas.")
    add_framing_arg(parser, default_help=f"{GRID_FRAMING} for models trained with framing")
    add("--seed", type=int, default=0, help="Seed of every tile's noise (default: %(default)s).")
    add("--output", default=None,
        help="PNG to write (default: assets/grid_epochs_{first}_{last}.png, or assets/atlas.png).")
    add_sampling_args(parser, batch_size=32)
    args = parser.parse_args(input_args)
    try:
        if args.atlas and (args.epochs or args.conditions):
            raise ValueError("--epochs and --conditions are for the epochs grid; --atlas shows all 126 conditions")
        args.condition_ids = (list(range(NUM_CONDITIONS)) if args.atlas
                              else parse_condition_ids(args.conditions or ["0", "1", "2", "3"]))
        args.device, args.torch_dtype = resolve_device_dtype(args.device, args.dtype)
    except ValueError as error:
        fail(str(error), prog=parser.prog)
    return args


def find_snapshots(run_dir, epochs=None):
    """{epoch: folder} of the epoch_{E}/ pipeline snapshots wanted, in numeric order; fail() if any is missing."""
    if not os.path.isdir(run_dir):
        fail(f"no run folder {run_dir!r}: pass --run_dir <train_fairface.py --output_dir>")
    found = {int(m.group(1)): os.path.join(run_dir, name) for name in os.listdir(run_dir)
             if (m := re.fullmatch(r"epoch_(\d+)", name))
             and os.path.isfile(os.path.join(run_dir, name, "model_index.json"))}  # complete snapshots only
    if not found:
        fail(f"no epoch_{{E}}/ snapshots in {run_dir!r} (train with --save_model_epochs to write them)")
    missing = [e for e in epochs or [] if e not in found]
    if missing:
        fail(f"no snapshot for epoch {', '.join(map(str, missing))} in {run_dir!r}; "
             f"found: {', '.join(map(str, sorted(found)))}")
    return {e: found[e] for e in sorted(set(epochs or found))}


def sample_row(model, args):
    """One image per condition, all from --seed's noise."""
    pipe = load_pipeline_or_exit(model, device=args.device, dtype=args.torch_dtype, scheduler=args.scheduler)
    framing = framing_or_exit(pipe, args.framing or (GRID_FRAMING if pipe.condition_encoder.config.framings else None),
                              model)
    return generate(pipe, [decode_condition(c) for c in args.condition_ids], [args.seed] * len(args.condition_ids),
                    batch_size=args.batch_size, framing=framing, **sampling_settings(pipe, args))


def main(args):
    note = f", {args.framing}" if args.framing in ("tight", "wide") else ""  # labels name a framing asked for
    if args.atlas:  # ids run age-major, so the 126 images fill 9 rows of 14 in order
        images = sample_row(args.model, args)
        grid = atlas_grid(images, note)
        output = args.output or os.path.join("assets", "atlas.png")
    else:
        snapshots = find_snapshots(args.run_dir, args.epochs)
        images = [image for folder in tqdm(snapshots.values(), desc="epochs") for image in sample_row(folder, args)]
        grid = labelled_grid(images, len(snapshots), len(args.condition_ids),
                             row_labels=[f"epoch {e}{note}" for e in snapshots],
                             col_labels=[describe_condition(c) for c in args.condition_ids])
        output = args.output or os.path.join("assets", f"grid_epochs_{min(snapshots)}_{max(snapshots)}.png")
    os.makedirs(os.path.dirname(output) or ".", exist_ok=True)
    grid.save(output)
    print(f"wrote {output} ({grid.width}x{grid.height} px)")
    return output


if __name__ == "__main__":
    main(parse_args())
