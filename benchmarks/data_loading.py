"""Training-input throughput: per-item decoding versus the uint8 pixel cache (``--preprocess_cache``).

What it measures: samples per second that the training loop of ``train_fairface.py`` gets from its data
pipeline, for one epoch at a time, in two variants:

* **decode per item** (no cache, what every epoch costs without ``--preprocess_cache``): ``FairFaceImages``
  without a cache reads each record from the ``datasets`` table and runs ``utils.data.fairface.decode_image`` (JPEG
  decode, RGB conversion, centre crop and bicubic resize to the training resolution);
* **pixel cache**: ``FairFaceImages`` over the memory-mapped uint8 array that
  ``utils.data.pixel_cache.build_pixel_cache`` wrote once (a gather of ready pixels per item).

Both go through what training uses: a fresh ``torch.utils.data.DataLoader`` per epoch with
``utils.data.fairface.EpochSampler``, ``utils.data.fairface.collate``, the same batch size and ``num_workers``
(0 and 2). Worker start-up is inside the timed epoch, as it is in training (a new loader each epoch). Each variant is timed
twice: the DataLoader alone (what the cache replaces), and with each batch then moved to the training device
and put through the training-time ``utils.run.objective.prepare_batch`` (scale to [-1, 1], random flip, condition
dropout) as the training step does - on a GPU that part runs on the GPU; on a CPU it is CPU work that the
cache does not remove. The one-off cache build time is reported too.

How: a synthetic FairFace-layout dataset (``utils.data.demo_data.make_demo_dataset``) with FairFace-sized
sources, by default 2000 faces at 224x224 (FairFace's "0.25" config size) re-encoded as JPEG (quality 90) as
in FairFace, trained at 128 px. The variants alternate round by round in one process; the table gives the
median samples/s over the rounds and the ratio cache / decode. The drawn faces are flat-coloured, so their
JPEGs decode faster than photographs do: the measured ratio understates the gain on real FairFace.

    python benchmarks/data_loading.py                      # ~1-2 min on 2 CPU cores
    python benchmarks/data_loading.py --num_images 500 --rounds 2   # quicker
"""

import argparse
import functools
import io
import os
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import end_run, machine_lines, markdown_table, median, start_run  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num_images", type=int, default=2000, help="Generated faces (all configs and splits).")
    parser.add_argument("--source_resolution", type=int, default=224, help="Stored image size (FairFace 0.25: 224).")
    parser.add_argument("--format", choices=["jpeg", "png"], default="jpeg", help="Stored encoding (FairFace: JPEG).")
    parser.add_argument("--resolution", type=int, default=128, help="Training resolution (decode + resize target).")
    parser.add_argument("--batch_size", type=int, default=64, help="Per-device batch size (train_fairface default).")
    parser.add_argument("--num_workers", type=int, nargs="+", default=[0, 2], help="DataLoader workers to compare.")
    parser.add_argument("--rounds", type=int, default=3, help="Alternating rounds (one decode epoch per variant each).")
    parser.add_argument("--cache_epochs", type=int, default=3, help="Cache epochs per round (each is short).")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads of the main process "
                        "(DataLoader workers always use 1); 1 keeps OpenMP from stalling on a shared CPU, 0: torch's "
                        "default.")
    parser.add_argument("--device", default=None, help="Where prepare_batch runs (default: cuda if available).")
    parser.add_argument("--work_dir", default=None, help="Keep the generated data and cache here (reused when "
                        "present); default: a temporary folder, deleted at the end.")
    return parser.parse_args(argv)


def reencode_as_jpeg(folder, quality=90):
    """Rewrite every image of a generated dataset folder as JPEG bytes, keeping schema and ClassLabel metadata."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    for root, _, files in os.walk(folder):
        for name in files:
            if not name.endswith(".parquet"):
                continue
            path = os.path.join(root, name)
            table = pq.read_table(path)
            column = table.column("image").combine_chunks()
            jpegs = []
            for record in column.to_pylist():
                buffer = io.BytesIO()
                Image.open(io.BytesIO(record["bytes"])).convert("RGB").save(buffer, "JPEG", quality=quality)
                jpegs.append({"bytes": buffer.getvalue(), "path": None})
            index = table.schema.get_field_index("image")
            table = table.set_column(index, table.schema.field(index), pa.array(jpegs, type=column.type))
            pq.write_table(table, path)


def make_dataset(folder, args):
    from utils.data.demo_data import make_demo_dataset

    marker = os.path.join(folder, f".complete-{args.num_images}-{args.source_resolution}-{args.format}")
    if os.path.isfile(marker):
        return folder, 0.0
    shutil.rmtree(folder, ignore_errors=True)
    start = time.perf_counter()
    make_demo_dataset(folder, num_images=args.num_images, resolution=args.source_resolution, seed=0)
    if args.format == "jpeg":
        reencode_as_jpeg(folder)
    open(marker, "w").close()
    return folder, time.perf_counter() - start


def run_epoch(images, args, num_workers, epoch, resolution, prepare=False, device="cpu"):
    """One training epoch of input: a fresh DataLoader as train_fairface.py builds it; with ``prepare``, each batch
    also goes to ``device`` and through utils.run.objective.prepare_batch there, as in the training step."""
    import torch

    from utils.data import fairface
    from utils.run import objective

    sampler = fairface.EpochSampler(len(images), seed=0, epoch=epoch)
    loader = torch.utils.data.DataLoader(images, batch_size=args.batch_size, sampler=sampler, drop_last=True,
                                         num_workers=num_workers, worker_init_fn=fairface.ignore_stop_signals,
                                         collate_fn=functools.partial(fairface.collate, resolution=resolution))
    samples, first, first_time = 0, None, None
    start = time.perf_counter()
    for step, batch in enumerate(loader):
        if prepare:
            generator = objective.step_generator(0, step, 0, 0, device)
            clean, attributes = objective.prepare_batch(batch["pixels"].to(device), batch["attributes"].to(device),
                                                       generator, random_flip=True, cond_drop_prob=0.1,
                                                       attr_drop_prob=0.1)
        samples += int(batch["weights"].sum())
        if first is None:
            first, first_time, first_samples = batch["pixels"], time.perf_counter(), samples
    if prepare and device != "cpu":
        torch.cuda.synchronize(device)
    end = time.perf_counter()
    steady = (samples - first_samples) / (end - first_time) if samples > first_samples else float("nan")
    return samples, end - start, first, steady


def main(args):
    work, device = start_run(args, "fairface-bench-data-")
    import datasets
    import torch

    from utils.data import fairface, pixel_cache

    datasets.disable_progress_bars()
    try:
        folder, generate_seconds = make_dataset(os.path.join(work, "fairface"), args)
        dataset = fairface.load_fairface(folder, cache_dir=os.path.join(work, "hf", "datasets"))
        print(f"dataset: {len(dataset)} records, {args.source_resolution}x{args.source_resolution} {args.format.upper()}"
              + (f" (generated in {generate_seconds:.0f} s)" if generate_seconds else " (reused)"), flush=True)

        # The one-off cache build, timed for each worker count (each into a fresh folder).
        build = {}
        for workers in args.num_workers:
            root = os.path.join(work, f"cache-build-{workers}w")
            shutil.rmtree(root, ignore_errors=True)
            start = time.perf_counter()
            cache = pixel_cache.build_pixel_cache(dataset, root, args.resolution, num_workers=workers, progress=False)
            build[workers] = time.perf_counter() - start
            print(f"cache build ({workers} workers): {build[workers]:.1f} s", flush=True)

        uncached = fairface.FairFaceImages(dataset, args.resolution)
        cached = fairface.FairFaceImages(dataset, args.resolution, cache)
        # Same epoch order, same pixels: the cache changes the cost, not the data.
        a = run_epoch(torch.utils.data.Subset(uncached, range(args.batch_size)), args, 0, 0, args.resolution)[2]
        b = run_epoch(torch.utils.data.Subset(cached, range(args.batch_size)), args, 0, 0, args.resolution)[2]
        identical = torch.equal(a, b)
        print(f"first batch identical with and without the cache: {identical}", flush=True)

        variants = [(kind, workers, prepare) for prepare in (False, True) for workers in args.num_workers
                    for kind in ("decode", "cache")]
        rates = {variant: [] for variant in variants}
        steady_rates = {variant: [] for variant in variants}
        epoch = 0
        for round_index in range(args.rounds):
            order = variants[::-1] if round_index % 2 else variants  # alternate which variant goes first
            for variant in order:
                kind, workers, prepare = variant
                for _ in range(1 if kind == "decode" else args.cache_epochs):
                    epoch += 1
                    samples, seconds, _, steady = run_epoch(uncached if kind == "decode" else cached, args, workers,
                                                            epoch, args.resolution, prepare, device)
                    rates[variant].append(samples / seconds)
                    steady_rates[variant].append(steady)
            print(f"round {round_index + 1}/{args.rounds}: " + ", ".join(
                f"{k}/{w}w{'+prep' if p else ''} {rates[k, w, p][-1]:.0f}/s" for k, w, p in order), flush=True)

        print()
        print(f"## Data loading: decode per item vs pixel cache ({len(dataset)} images, "
              f"{args.source_resolution} px {args.format.upper()} -> {args.resolution} px, batch {args.batch_size})")
        print()
        rows = []
        for prepare in (False, True):
            for workers in args.num_workers:
                decode, cache_rate = median(rates["decode", workers, prepare]), median(rates["cache", workers, prepare])
                steady = (median(steady_rates["cache", workers, prepare])
                          / median(steady_rates["decode", workers, prepare]))
                epoch_decode, epoch_cache = len(dataset) / decode, len(dataset) / cache_rate
                rows.append([f"DataLoader{f' + prepare_batch on {device}' if prepare else ''}", workers,
                             f"{decode:.0f}", f"{cache_rate:.0f}", f"**{cache_rate / decode:.1f}x**", f"{steady:.1f}x",
                             f"{epoch_decode:.2f} s", f"{epoch_cache:.2f} s", f"{build[workers]:.1f} s"])
        print(markdown_table(["input pipeline", "num_workers", "decode per item (samples/s)",
                              "pixel cache (samples/s)", "ratio cache/decode", "ratio after the first batch",
                              "epoch, decode", "epoch, cache", "one-off cache build"], rows))
        print()
        print(f"Median of {args.rounds} alternating rounds (decode: 1 epoch per round and variant, cache: "
              f"{args.cache_epochs}); every epoch through a fresh DataLoader (worker start-up included; \"after the first "
              "batch\": the same ratio without it, the steady state of a long FairFace epoch). "
              "\"+ prepare_batch\": each batch also moved to the training device and scaled/flipped/condition-dropped "
              "by utils.run.objective.prepare_batch, as the training step does (on a GPU that part runs on the GPU). "
              f"Batches identical with and without the cache: {'yes' if identical else 'NO'}. Cache: "
              f"{os.path.getsize(os.path.join(cache['folder'], 'pixels.npy')) / 2**20:.0f} MiB for {len(dataset)} "
              f"images; its build costs about one decode epoch and pays for itself from the second epoch on.")
        print()
        print("\n".join(machine_lines(device)))
    finally:
        end_run(args, work)


if __name__ == "__main__":
    main(parse_args())
