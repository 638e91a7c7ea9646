"""benchmarks/gpu_suite.sh's one table, from whatever its steps finished in one folder.

Reads, when there: ``training_speed.json`` (fp32 and bf16), ``training_speed_compile.json`` (bf16 +
torch.compile, its warm-up apart), ``model_cost.json`` (FLOPs; peak memory per batch size), ``sampling_speed.log``
and ``student_sampling_speed.log`` (benchmarks/sampling_speed.py's printed tables, read by column name),
``dataset_generation.log`` (generate_dataset.py's images/s) and ``status.txt`` (gpu_suite.sh's line per step:
done, skipped or out of time). A step that did not finish is a row that says so; the table is printed anyway.

    python benchmarks/suite_table.py RESULTS_DIR
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import markdown_table  # noqa: E402


def markdown_rows(text, first_column):
    """The rows (dicts by header) of the first markdown table in ``text`` whose first header is ``first_column``."""
    header, rows = None, []
    for line in text.splitlines():
        cells = [cell.strip().replace("**", "") for cell in line.strip().strip("|").split("|")]
        if header is None:
            if line.startswith("|") and cells[0] == first_column:
                header = cells
        elif line.startswith("|"):
            if not set(line) <= set("|-: "):
                rows.append(dict(zip(header, cells)))
        else:
            break
    return rows


def gib(value):
    return f"{value / 2**30:.2f} GiB" if value else "n/a"


def _read(folder, name):
    path = os.path.join(folder, name)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f) if name.endswith(".json") else f.read()


def step_status(folder):
    """{step name: outcome} from gpu_suite.sh's status.txt."""
    text = _read(folder, "status.txt") or ""
    return dict(line.split("|", 1) for line in text.splitlines() if "|" in line)


def training_rows(speed, only=None):
    rows = []
    for variant in speed["variants"]:
        if only and variant["variant"] != only:
            continue
        mfu = f"{variant['mfu']:.1%}" if variant["mfu"] is not None else "n/a"
        rows.append([f"training, batch {speed['batch']}", variant["variant"], f"{variant['images_per_s']:.1f}",
                     f"{variant['speedup']:.2f}x", gib(variant["peak_bytes"]), mfu])
    return rows


def sampling_rows(text, kind, student=False):
    rows = []
    for row in markdown_rows(text or "", "sampler"):
        if not row.get("images/s") or (student and not row["sampler"].startswith("pipeline")):
            continue
        note = "speed only (undistilled weights)" if student else f"all three attributes: {row.get('all three', 'n/a')}"
        rows.append([kind, row["sampler"], row["images/s"], row.get("speed-up", ""), "", note])
    return rows


def suite_rows(folder):
    """(device name, rows): training, peak memory per batch, sampling, dataset generation; unfinished steps say so."""
    status, rows, device = step_status(folder), [], None

    def missing(step, kind):
        if status.get(step) != "done":
            rows.append([kind, f"not measured: {status.get(step, 'not run')}", "", "", "", ""])

    speed, compiled = _read(folder, "training_speed.json"), _read(folder, "training_speed_compile.json")
    cost = _read(folder, "model_cost.json")
    if speed and not speed["variants"]:  # cut after its warm-ups: nothing timed
        speed = None
    if speed:
        device = speed["device_name"]
        model = f"{speed['model']} UNet, {speed['params'] / 1e6:.1f} M parameters, {speed['resolution']} px"
        if cost:
            model += f", {cost['training_flops_per_image'] / 1e9:.1f} GFLOP per training image"
        rows.append(["training cost", model, "", "", "", ""])
        rows += training_rows(speed)
    else:
        missing("training speed", "training")
    warmup = (compiled or {}).get("warmup_seconds", {}).get("fast + torch.compile")
    if compiled and compiled["variants"]:
        device = device or compiled["device_name"]
        rows += training_rows(compiled, only="fast + torch.compile")
        rows[-1][1] += f" (compile warm-up {warmup:.0f} s, not timed; ratio to its own run's fp32)"
    elif warmup is not None:
        rows.append(["training, bf16 + torch.compile", f"compile warm-up {warmup:.0f} s; timing not measured: "
                     f"{status.get('torch.compile', 'not run')}", "", "", "", ""])
    else:
        missing("torch.compile", "training, bf16 + torch.compile")
    if cost:
        older = [dict(batch=cost["peak_batch"], precision="fp32", peak_bytes=cost["peak_bytes"])]
        for peak in cost.get("peaks", older):
            memory = peak["peak_bytes"]
            memory = "out of memory" if memory is None else gib(memory) if isinstance(memory, int) else \
                "n/a (CPU: first step only)"
            rows.append(["peak memory, one training step", f"batch {peak['batch']}, {peak['precision']}", "", "",
                         memory, ""])
    else:
        missing("model cost", "peak memory")
    teacher = sampling_rows(_read(folder, "sampling_speed.log"), "sampling")
    rows += teacher
    if not teacher:
        missing("sampling", "sampling")
    student = sampling_rows(_read(folder, "student_sampling_speed.log"), "sampling, as a distilled student", True)
    rows += student
    if not student:
        missing("student sampling", "sampling, as a distilled student")
    generation = [row for row in markdown_rows(_read(folder, "dataset_generation.log") or "", "variant")
                  if row["variant"] == "generate_dataset"]
    for row in generation:
        rows.append(["generate_dataset.py", "images/s, parquet shards included", row["images/s (median of rounds)"],
                     "", "", ""])
    if not generation:
        missing("dataset generation", "generate_dataset.py")
    return device or "device unknown (no training step finished)", rows


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or not os.path.isdir(argv[0]):
        raise SystemExit("usage: python benchmarks/suite_table.py RESULTS_DIR")
    device, rows = suite_rows(argv[0])
    print(f"## GPU suite: {device}")
    print()
    print(markdown_table(["benchmark", "setting", "images/s", "ratio", "peak memory", "MFU / fidelity"], rows))


if __name__ == "__main__":
    main()
