"""Helpers shared by the benchmarks: repository import path, offline caches, machine description, tables.

Every benchmark measures the variants it compares side by side in one process, alternating between them
round by round, and reports ratios: on a shared or throttled machine absolute numbers drift, ratios much less.
"""

import os
import platform
import statistics
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)


def offline_environment(hf_home=None):
    """Point the Hugging Face caches at a private folder and stay offline (the benchmarks read generated data)."""
    hf_home = hf_home or tempfile.mkdtemp(prefix="fairface-bench-hf-")
    os.environ.update(HF_HOME=hf_home, HF_DATASETS_CACHE=os.path.join(hf_home, "datasets"), HF_HUB_OFFLINE="1",
                      HF_DATASETS_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1")
    return hf_home


def start_run(args, prefix):
    """A benchmark's common start: work folder, offline caches, torch threads, device. Returns (work, device)."""
    import torch

    work = args.work_dir or tempfile.mkdtemp(prefix=prefix)
    os.makedirs(work, exist_ok=True)
    offline_environment(os.path.join(work, "hf"))
    if args.threads:
        torch.set_num_threads(args.threads)
    return work, args.device or ("cuda" if torch.cuda.is_available() else "cpu")


def end_run(args, work):
    """Delete the work folder unless the user chose it with --work_dir (then it is kept for the next run)."""
    if not args.work_dir:
        import shutil

        shutil.rmtree(work, ignore_errors=True)


def run_in_work_folder(args, prefix, benchmark):
    """``benchmark(args, work)`` between ``start_run`` and ``end_run`` (the work folder goes even on a failure)."""
    work, _ = start_run(args, prefix)
    try:
        benchmark(args, work)
    finally:
        end_run(args, work)


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_lines(device=None):
    """Markdown bullet lines describing where the benchmark ran."""
    import torch

    lines = [f"- CPU: {cpu_model()} ({os.cpu_count()} logical cores visible, torch threads {torch.get_num_threads()})"]
    if hasattr(os, "getloadavg"):
        lines.append("- load average at start (1/5/15 min): " + " / ".join(f"{v:.1f}" for v in os.getloadavg()))
    lines.append(f"- Python {platform.python_version()}, torch {torch.__version__}, {platform.platform()}")
    try:
        import diffusers

        lines[-1] += f", diffusers {diffusers.__version__}"
    except ImportError:
        pass
    if device is not None:
        device = torch.device(device)
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
        lines.append(f"- device: {device} ({name})")
    return lines


def markdown_table(header, rows):
    """header: list of column names; rows: lists of cells (already formatted strings or numbers)."""
    def cell(value):
        return f"{value:.3g}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def median(values):
    return statistics.median(values) if values else float("nan")
