"""benchmarks/gpu_suite.sh's one table, from the results its benchmarks wrote into one folder.

Reads ``model_cost.json`` and ``training_speed.json`` (their ``--json`` output) and ``sampling_speed.log``
(benchmarks/sampling_speed.py's printed markdown table, read by column name) and, when there,
``student_sampling_speed.log`` (the same at 2 steps, guidance 1: a distilled student's sampler), and prints one
markdown table.

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


def suite_rows(folder):
    with open(os.path.join(folder, "model_cost.json")) as f:
        cost = json.load(f)
    with open(os.path.join(folder, "training_speed.json")) as f:
        speed = json.load(f)
    with open(os.path.join(folder, "sampling_speed.log")) as f:
        sampling = markdown_rows(f.read(), "sampler")
    if not sampling:
        raise SystemExit("suite_table.py: error: no sampling table in sampling_speed.log")
    model = (f"{speed['model']} UNet, {cost['unet_params'] / 1e6:.1f} M parameters, {speed['resolution']} px, "
             f"{cost['training_flops_per_image'] / 1e9:.1f} GFLOP per training image")
    rows = [["training cost", model, "", "", gib(cost["peak_bytes"]) + f" (batch {cost['peak_batch']})", ""]]
    for variant in speed["variants"]:
        mfu = f"{variant['mfu']:.1%}" if variant["mfu"] is not None else "n/a"
        rows.append([f"training, batch {speed['batch']}", variant["variant"], f"{variant['images_per_s']:.1f}",
                     f"{variant['speedup']:.2f}x", gib(variant["peak_bytes"]), mfu])
    for row in sampling:
        if row.get("images/s"):
            rows.append(["sampling", row["sampler"], row["images/s"], row.get("speed-up", ""), "",
                         f"all three attributes: {row.get('all three', 'n/a')}"])
    student = os.path.join(folder, "student_sampling_speed.log")  # a distilled student's sampler, same UNet
    if os.path.isfile(student):
        with open(student) as f:
            for row in markdown_rows(f.read(), "sampler"):
                if row.get("images/s") and row["sampler"].startswith("pipeline"):
                    rows.append(["sampling, as a distilled student", row["sampler"], row["images/s"],
                                 row.get("speed-up", ""), "", "speed only (undistilled weights)"])
    return speed["device_name"], rows


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
