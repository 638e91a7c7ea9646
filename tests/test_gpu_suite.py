"""benchmarks/gpu_suite.sh --tiny: the GPU check's CPU-sized dry run runs every step and prints its one table
(no GPU needed: the same scripts with tiny sizes on the CPU); a time budget that runs out still prints the table,
with what finished and which step ran out."""

import os
import signal
import subprocess
import time

import pytest

from conftest import REPO


def suite(tmp_path, budget=None):
    env = {**os.environ, "GPU_SUITE_DIR": str(tmp_path), "OMP_NUM_THREADS": "1"}
    if budget is not None:
        env["GPU_SUITE_BUDGET"] = str(budget)
    return subprocess.run(["bash", os.path.join(REPO, "benchmarks", "gpu_suite.sh"), "--tiny"], cwd=REPO,
                          capture_output=True, text=True, timeout=1200, env=env)


def table_rows(out):
    table = [line for line in out.splitlines() if line.startswith("| ")]
    assert table[0].startswith("| benchmark | setting | images/s | ratio | peak memory |")
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in table[1:]]


@pytest.mark.e2e
def test_gpu_suite_tiny_prints_one_table_of_real_numbers(tmp_path):
    result = suite(tmp_path)
    assert result.returncode == 0, f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    out = result.stdout
    assert out.count("## GPU suite: CPU") == 1
    rows = table_rows(out)
    kinds = [cells[0] for cells in rows]
    # The table's order: training, peak memory per batch size, sampling, student, generate_dataset.py.
    assert kinds.index("training cost") < kinds.index("peak memory, one training step") < kinds.index("sampling") \
        < kinds.index("sampling, as a distilled student") < kinds.index("generate_dataset.py")
    assert any("1.0 M parameters, 32 px" in cells[1] and "GFLOP per training image" in cells[1] for cells in rows)
    training = [cells for cells in rows if cells[0].startswith("training, batch")]
    assert [cells[1].split(":")[0] for cells in training] == ["baseline", "fast"]
    assert training[0][3] == "1.00x" and all(float(cells[2]) > 0 for cells in training)
    compiled = [cells for cells in rows if cells[0] == "training, bf16 + torch.compile"]
    assert compiled and "the CPU dry run does not compile" in compiled[0][1]
    peaks = [cells for cells in rows if cells[0] == "peak memory, one training step"]
    assert [cells[1] for cells in peaks] == ["batch 2, fp32", "batch 4, fp32", "batch 2, bf16", "batch 4, bf16"]
    assert peaks[0][4].endswith("GiB") and all(cells[4] == "n/a (CPU: first step only)" for cells in peaks[1:])
    sampling = [cells for cells in rows if cells[0] == "sampling"]
    assert len(sampling) == 2 and sampling[0][1].startswith("seed loop") and sampling[1][1].startswith("pipeline")
    assert all(float(cells[2]) > 0 for cells in sampling) and sampling[1][3].endswith("x")
    student = [cells for cells in rows if cells[0] == "sampling, as a distilled student"]
    assert len(student) == 1 and "2 steps" in student[0][1] and "(2 UNet evals/image)" in student[0][1]
    assert float(student[0][2]) > 0 and student[0][5] == "speed only (undistilled weights)"
    [generation] = [cells for cells in rows if cells[0] == "generate_dataset.py"]
    assert float(generation[2]) > 0
    assert "of the 330 s budget" in out
    for name in ("model_cost.json", "training_speed.json", "sampling_speed.log", "student_sampling_speed.log",
                 "dataset_generation.log"):
        assert os.path.getsize(tmp_path / name) > 0


@pytest.mark.e2e
def test_a_budget_that_runs_out_still_prints_what_finished(tmp_path):
    """2 s: the first step (training speed) is cut, the rest are skipped; the table says so, exit status 0."""
    result = suite(tmp_path, budget=2)
    assert result.returncode == 0, f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    rows = {cells[0]: cells[1] for cells in table_rows(result.stdout)}
    assert rows["training"] == "not measured: ran out of the 2 s budget"
    assert rows["peak memory"] == "not measured: skipped: the 2 s budget was spent"
    assert "generate_dataset.py" in rows and "Total" in result.stdout


def test_gpu_suite_refuses_unknown_arguments():
    result = subprocess.run(["bash", os.path.join(REPO, "benchmarks", "gpu_suite.sh"), "--fast"], cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "unknown argument --fast" in result.stderr
    result = subprocess.run(["bash", os.path.join(REPO, "benchmarks", "gpu_suite.sh"), "--tiny"], cwd=REPO,
                            capture_output=True, text=True, timeout=60, env={**os.environ, "GPU_SUITE_BUDGET": "5m"})
    assert result.returncode == 2 and "GPU_SUITE_BUDGET must be whole seconds" in result.stderr


@pytest.mark.e2e
def test_ctrl_c_stops_the_running_step_and_prints_the_table(tmp_path):
    """SIGINT to the suite (Ctrl-C, or an outer timeout's SIGTERM): the running benchmark stops with it (no
    process left behind) and the table of what finished is still printed."""
    env = {**os.environ, "GPU_SUITE_DIR": str(tmp_path), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(["bash", os.path.join(REPO, "benchmarks", "gpu_suite.sh"), "--tiny"], cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    assert process.stdout.readline().startswith("[gpu_suite] results in")
    deadline = time.monotonic() + 120  # inside the first step: its log is open (a fixed sleep missed it under load)
    while not (tmp_path / "training_speed.log").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1)
    process.send_signal(signal.SIGINT)
    out = process.communicate(timeout=120)[0]
    assert process.returncode == 130, out
    rows = {cells[0]: cells[1] for cells in table_rows(out)}
    assert rows["training"] == "not measured: stopped by a signal" and rows["peak memory"] == "not measured: not run"
    time.sleep(1)
    left = subprocess.run(["pgrep", "-f", f"benchmarks/training_speed.py.*{tmp_path}"], capture_output=True)
    assert left.returncode == 1, left.stdout
