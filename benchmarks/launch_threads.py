"""The README's quick start with and without accelerate's default of one CPU thread, side by side.

Runs ``accelerate launch train_fairface.py --demo --max_train_steps N`` (no accelerate config, as on a new
machine) in two ways, alternated round by round after one untimed run that writes the demo data and pixel
cache: as is (train_fairface.py replaces the launcher's OMP_NUM_THREADS=1 by this machine's cores), and with
``OMP_NUM_THREADS=1`` exported by the user, which the script keeps: what the quick start did before. Prints the
wall time per training step of each and their ratio. The step budget is cut (``--max_train_steps``); the full
quick start is the same command without it.

    python benchmarks/launch_threads.py                 # 3 rounds of 100 steps
"""

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import REPO, machine_lines, markdown_table, offline_environment  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max_train_steps", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--work_dir", default=None, help="Demo data, cache and runs (default: a temporary folder).")
    return parser.parse_args(argv)


def quick_start(work, steps, env, name):
    """One ``accelerate launch train_fairface.py --demo`` run; returns (seconds, torch threads it reported)."""
    command = [sys.executable, "-m", "accelerate.commands.launch", os.path.join(REPO, "train_fairface.py"), "--demo",
               "--max_train_steps", str(steps), "--output_dir", os.path.join(work, name), "--report_to", "none"]
    start = time.perf_counter()
    result = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode:
        sys.exit(f"launch_threads.py: error: the run failed ({result.returncode}):\n{result.stderr[-3000:]}")
    threads = re.search(r"(\d+) torch threads per process", result.stdout + result.stderr)
    return seconds, int(threads.group(1)) if threads else None


def main(args):
    work = args.work_dir or tempfile.mkdtemp(prefix="fairface-bench-threads-")
    os.makedirs(work, exist_ok=True)
    offline_environment(os.path.join(work, "hf"))  # also: no accelerate config (it lives under HF_HOME)
    base = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    variants = {"accelerate launch (script picks the threads)": base,
                "OMP_NUM_THREADS=1 (accelerate's default, before)": {**base, "OMP_NUM_THREADS": "1"}}
    print("untimed first run (demo data, pixel cache)...", flush=True)
    quick_start(work, 1, base, "warm-up")
    seconds, threads = {name: [] for name in variants}, {}
    for round_index in range(args.rounds):
        order = list(variants) if round_index % 2 == 0 else list(variants)[::-1]
        for name in order:
            run_name = f"run-{round_index}-{list(variants).index(name)}"
            elapsed, threads[name] = quick_start(work, args.max_train_steps, variants[name], run_name)
            seconds[name].append(elapsed)
            print(f"round {round_index + 1}: {name}: {elapsed:.1f} s", flush=True)
    names = list(variants)
    baseline = statistics.median(seconds[names[1]])
    rows = [[name, threads[name], f"{statistics.median(seconds[name]):.1f} s",
             f"**{baseline / statistics.median(seconds[name]):.2f}x**"] for name in names]
    print()
    print(f"## Quick start threads: accelerate launch train_fairface.py --demo --max_train_steps {args.max_train_steps}")
    print()
    print(markdown_table(["run", "torch threads", "wall time (median)", "speed-up"], rows))
    print()
    print(f"Median of {args.rounds} alternating rounds; each run includes start-up, the final samples and release.")
    print("\n".join(machine_lines()))


if __name__ == "__main__":
    main(parse_args())
