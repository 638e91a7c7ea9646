"""evaluate_cas.py's peak memory at two dataset sizes 10x apart: flat, or growing with the dataset?

What it measures: the peak resident memory (ru_maxrss, the RSS high-water mark: anonymous memory and every
memory-mapped file page the process touched) of a whole ``python evaluate_cas.py`` process, once with --images
synthetic images and once with 10x as many, the real data growing with them, one process per size. Both runs
use the same resolution, --train_steps and --batch_size, so only the dataset's size differs; the ratio of the
two peaks is printed (target: close to 1).

The data: a generated dataset in generate_dataset.py's layout (parquet shards of --shard_size PNG images, its
features, written by ``utils.datasets.dataset_shards``) of procedural demo faces (``utils.data.demo_data``), and
a FairFace-layout real dataset (``make_demo_dataset``) of 2.5x as many faces, so its 0.25 train split (40 %)
holds as many real training images as there are synthetic ones and its validation split (10 %) a quarter as many
test images. The generated dataset has no generator record: evaluate_cas.py warns that it cannot check the test
split and goes on. "decoded pixels" is what one copy of every image at the classifier's resolution takes.

    python benchmarks/cas_memory.py --threads 1
    python benchmarks/cas_memory.py --images 48 --train_steps 2 --threads 1   # the test's tiny run
"""

import argparse
import json
import math
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import REPO, end_run, machine_lines, markdown_table, start_run  # noqa: E402

# The script run as `python SCRIPT ARGS` from the repository, then the process's own high-water mark (KiB on Linux).
MEASURED_PROCESS = ("import resource, runpy, sys; sys.argv = sys.argv[1:]; sys.path.insert(0, '.'); "
                    "runpy.run_path(sys.argv[0], run_name='__main__'); "
                    "print('MAXRSS', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--images", type=int, default=1000, help="Synthetic images of the smaller run; the larger has 10x "
        "(default: %(default)s).")
    add("--resolution", type=int, default=64, help="Stored and classifier image size (default: %(default)s).")
    add("--train_steps", type=int, default=20, help="Steps per classifier, the same at both sizes (default: "
        "%(default)s).")
    add("--batch_size", type=int, default=64, help="evaluate_cas.py's --batch_size (default: %(default)s).")
    add("--shard_size", type=int, default=1000, help="Images per parquet shard of the generated dataset, as "
        "generate_dataset.py's default (default: %(default)s).")
    add("--threads", type=int, default=None, help="torch threads of the measured processes (OMP_NUM_THREADS).")
    add("--device", default="cpu", help="evaluate_cas.py's --device (default: %(default)s).")
    add("--script", default="evaluate_cas.py", help="The script measured, run from the repository folder (default: "
        "%(default)s); e.g. an older version's copy, to compare.")
    add("--work_dir", default=None, help="Keep the generated data here (default: a temporary folder, deleted).")
    add("--json", default=None, help="Also write the numbers to this file.")
    return parser.parse_args(argv)


def write_synthetic(folder, count, resolution, shard_size, seed):
    """``count`` demo faces, conditions cycling through all 126, as a generated dataset's parquet shards."""
    import numpy as np

    from utils.data.demo_data import draw_face
    from utils.datasets.dataset_shards import features, write_shard
    from utils.labels import decode_condition

    rng = np.random.default_rng(seed)
    shard_features = features()
    shards = math.ceil(count / shard_size)
    os.makedirs(os.path.join(folder, "data"), exist_ok=True)
    for shard in range(shards):
        rows = range(shard * shard_size, min(count, (shard + 1) * shard_size))
        labels = [decode_condition(row % 126) for row in rows]
        columns = {"image": [draw_face(*label, rng, resolution=resolution) for label in labels],
                   "age": [a for a, _, _ in labels], "gender": [g for _, g, _ in labels],
                   "race": [r for _, _, r in labels], "condition_id": [row % 126 for row in rows],
                   "seed": list(rows)}
        write_shard(os.path.join(folder, "data", f"train-{shard:05d}-of-{shards:05d}.parquet"), columns,
                    shard_features)
    return folder


def measure(args, work, images):
    """(peak RSS in MiB, seconds, metrics.json) of one evaluate_cas.py process on ``images`` synthetic images."""
    from utils.data.demo_data import make_demo_dataset

    folder = os.path.join(work, f"size-{images}")
    synthetic = os.path.join(folder, "synthetic")
    real = os.path.join(folder, "real")
    if not os.path.isdir(synthetic):
        write_synthetic(synthetic, images, args.resolution, args.shard_size, seed=images)
    if not os.path.isdir(real):
        make_demo_dataset(real, num_images=math.ceil(2.5 * images), resolution=args.resolution, seed=images + 1)
    output_dir = os.path.join(folder, "cas")
    env = {**os.environ, **({"OMP_NUM_THREADS": str(args.threads)} if args.threads else {})}
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", MEASURED_PROCESS, os.path.abspath(args.script) if
                             os.path.exists(args.script) else args.script, "--synthetic", synthetic,
                             "--dataset_name", real, "--train_steps", str(args.train_steps), "--batch_size",
                             str(args.batch_size), "--device", args.device, "--output_dir", output_dir],
                            cwd=REPO, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if result.returncode:
        raise SystemExit(f"{args.script} exited {result.returncode}:\n{result.stderr[-3000:]}")
    with open(os.path.join(output_dir, "metrics.json")) as f:
        metrics = json.load(f)
    return int(result.stdout.split("MAXRSS")[-1].split()[0]) / 1024, seconds, metrics  # KiB -> MiB


def main(args):
    work, _ = start_run(args, "fairface-bench-cas-")
    runs = {}
    for images in (args.images, 10 * args.images):
        peak, seconds, metrics = measure(args, work, images)
        counts = metrics["counts"]
        pixels = (counts["synthetic"] + counts["real"] + counts["test"]) * args.resolution ** 2 * 3 / 2 ** 20
        runs[images] = {"peak_rss_mib": round(peak, 1), "seconds": round(seconds, 1), "counts": counts,
                        "decoded_pixels_mib": round(pixels, 1)}
    small, large = runs[args.images], runs[10 * args.images]
    ratio = large["peak_rss_mib"] / small["peak_rss_mib"]

    print("\n".join([f"## {args.script} peak memory", "", *machine_lines(), f"- {args.resolution} px, "
                     f"{args.train_steps} steps per classifier, batch {args.batch_size}, shards of {args.shard_size}, "
                     f"OMP_NUM_THREADS {args.threads or os.environ.get('OMP_NUM_THREADS', 'unset')}", ""]))
    print(markdown_table(["synthetic images", "real train / test images", "decoded pixels (MiB)", "peak RSS (MiB)",
                          "seconds"],
                         [[n, f"{r['counts']['real']} / {r['counts']['test']}", f"{r['decoded_pixels_mib']:.0f}",
                           f"{r['peak_rss_mib']:.0f}", f"{r['seconds']:.0f}"] for n, r in runs.items()]))
    print(f"\npeak RSS at {10 * args.images} / at {args.images} synthetic images: {ratio:.3f}x (target: close to 1)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"settings": vars(args), "runs": {str(n): r for n, r in runs.items()},
                       "peak_rss_ratio": round(ratio, 4)}, f, indent=1)
    end_run(args, work)


if __name__ == "__main__":
    main(parse_args())
