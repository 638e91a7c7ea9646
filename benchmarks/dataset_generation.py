"""Dataset generation: generate_dataset.py's images/s against the pipeline's own generate(), and its peak memory.

Speed: on the same model, conditions, seeds, sampler settings and --batch_size, rounds alternate between
* **generate()**: ``utils.model.pipeline.generate`` on the already loaded pipeline, images kept in memory;
* **generate_dataset**: ``generate_dataset.main`` into a fresh folder, everything included (loading the model,
  the plan, PNG encoding, parquet shards written atomically, the card);
after an untimed warm-up of both, so machine load hits both alike; the medians' ratio is printed (target >= 0.95).

Memory: peak resident memory (ru_maxrss) of a whole ``python generate_dataset.py`` process at two dataset sizes
10x apart (--memory_images and 10x that, the same --shard_size), run one after the other; the ratio should be
close to 1 (target: within 10 %), since only one shard of images is held at a time.

    python benchmarks/dataset_generation.py --model fairface-demo --threads 1
    python benchmarks/dataset_generation.py --model /tmp/tiny --threads 1 --images 64 --memory_images 64 \\
        --num_inference_steps 2
"""

import argparse
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import REPO, end_run, machine_lines, markdown_table, median, start_run  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="A trained pipeline folder (e.g. train_fairface.py --demo's).")
    parser.add_argument("--images", type=int, default=252, help="Images per speed round (default: %(default)s).")
    parser.add_argument("--rounds", type=int, default=3, help="Timed rounds per variant (default: %(default)s).")
    parser.add_argument("--batch_size", type=int, default=64, help="Both variants' batch (default: %(default)s).")
    parser.add_argument("--num_inference_steps", type=int, default=None, help="Default: the model's own.")
    parser.add_argument("--memory_images", type=int, default=126, help="The smaller memory run's size; the larger "
                        "is 10x (default: %(default)s).")
    parser.add_argument("--shard_size", type=int, default=126, help="Shard size of the memory runs.")
    parser.add_argument("--memory", action=argparse.BooleanOptionalAction, default=True,
                        help="Also the two memory runs (--no-memory: speed only, as benchmarks/gpu_suite.sh runs it).")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (and OMP_NUM_THREADS).")
    parser.add_argument("--device", default=None, help="Default: cuda if available, else cpu.")
    parser.add_argument("--work_dir", default=None, help="Keep the generated folders here (default: a temporary "
                        "folder, deleted).")
    return parser.parse_args(argv)


def dataset_args(args, output_dir, images, device, shard_size):
    """generate_dataset.py flags for ``images`` images: conditions 0.. with one image each, cycling (126 max)."""
    conditions, per_condition = (images, 1) if images <= 126 else (126, images // 126)
    steps = ["--num_inference_steps", str(args.num_inference_steps)] if args.num_inference_steps else []
    return ["--model", args.model, "--output_dir", output_dir, "--conditions", f"0-{conditions - 1}",
            "--images_per_condition", str(per_condition), "--batch_size", str(args.batch_size), "--shard_size",
            str(shard_size), "--device", str(device), *steps]


def main(args):
    import torch

    import generate_dataset
    from utils.model.conditions import load_pipeline_or_exit
    from utils.labels import decode_condition
    from utils.model.pipeline import generate

    if os.path.isdir(args.model):  # the memory runs start in the repository's folder
        args.model = os.path.abspath(args.model)

    work, device = start_run(args, "fairface-bench-dataset-")
    pipe = load_pipeline_or_exit(args.model, device=device)
    pipe.set_progress_bar_config(disable=True)
    settings = pipe.sampling_settings(num_inference_steps=args.num_inference_steps)
    conditions = [decode_condition(i % 126) for i in range(args.images)]
    seeds = list(range(args.images))  # generate_dataset's seeds for --seed 0: image i gets seed i

    def run_generate():
        generate(pipe, conditions, seeds, args.batch_size, **settings)

    def run_dataset(round_index):
        folder = os.path.join(work, f"speed-{round_index}")
        generate_dataset.main(generate_dataset.parse_args(dataset_args(args, folder, args.images, device,
                                                                       args.images)))

    timings = {"generate()": [], "generate_dataset": []}
    run_generate(), run_dataset("warmup")  # untimed: first-call costs of both
    for round_index in range(args.rounds):
        for name, run in (("generate()", run_generate), ("generate_dataset", lambda: run_dataset(round_index))):
            start = time.perf_counter()
            run()
            timings[name].append(args.images / (time.perf_counter() - start))
    speed = {name: median(values) for name, values in timings.items()}

    memory = {}
    for images in (args.memory_images, 10 * args.memory_images) if args.memory else ():
        folder = os.path.join(work, f"memory-{images}")
        code = ("import resource, runpy, sys; sys.argv = sys.argv[1:]; sys.path.insert(0, '.'); "
                "runpy.run_path('generate_dataset.py', run_name='__main__'); "
                "print('MAXRSS', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
        env = {**os.environ, **({"OMP_NUM_THREADS": str(args.threads)} if args.threads else {})}
        result = subprocess.run([sys.executable, "-c", code, "generate_dataset.py",
                                 *dataset_args(args, folder, images, device, args.shard_size)],
                                cwd=REPO, capture_output=True, text=True, env=env)
        if result.returncode:
            raise SystemExit(result.stderr[-3000:])
        memory[images] = int(result.stdout.split("MAXRSS")[-1].split()[0]) / 1024  # KiB -> MiB

    print("\n".join(["## Dataset generation", "", *machine_lines(device), f"- model: {args.model}; "
                     f"{settings['num_inference_steps']} steps, batch {args.batch_size}, torch threads "
                     f"{torch.get_num_threads()}", ""]))
    print(markdown_table(["variant", "images/s (median of rounds)", "rounds"],
                         [[name, speed[name], ", ".join(f"{v:.2f}" for v in timings[name])] for name in timings]))
    print(f"\ngenerate_dataset / generate(): {speed['generate_dataset'] / speed['generate()']:.3f}x "
          "(target >= 0.95x)\n")
    sizes = sorted(memory)
    if not sizes:
        return end_run(args, work)
    print(markdown_table(["dataset images", "shard size", "peak RSS (MiB)"],
                         [[n, args.shard_size, f"{memory[n]:.0f}"] for n in sizes]))
    print(f"\npeak RSS at {sizes[1]} / at {sizes[0]} images: {memory[sizes[1]] / memory[sizes[0]]:.3f}x "
          "(target: within 10 %)")
    end_run(args, work)


if __name__ == "__main__":
    main(parse_args())
