"""benchmarks/gpu_suite.sh --tiny: the GPU suite's CPU-sized dry run runs every step and prints its one table
(no GPU needed: the same scripts with tiny sizes on the CPU)."""

import os
import subprocess

from conftest import REPO


def test_gpu_suite_tiny_prints_one_table_of_real_numbers(tmp_path):
    result = subprocess.run(["bash", os.path.join(REPO, "benchmarks", "gpu_suite.sh"), "--tiny"], cwd=REPO,
                            capture_output=True, text=True, timeout=1200,
                            env={**os.environ, "GPU_SUITE_DIR": str(tmp_path), "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    out = result.stdout
    assert out.count("## GPU suite: CPU") == 1
    table = [line for line in out.splitlines() if line.startswith("| ")]
    assert table[0].startswith("| benchmark | setting | images/s | ratio |")
    rows = {(cells[0], cells[1]): cells for cells in
            ([cell.strip() for cell in line.strip("|").split("|")] for line in table[1:])}
    assert any("1.0 M parameters, 32 px" in setting and "GFLOP per training image" in setting
               for kind, setting in rows if kind == "training cost")
    training = [cells for (kind, _), cells in rows.items() if kind.startswith("training, batch")]
    assert [cells[1].split(":")[0] for cells in training] == ["baseline", "fast"]
    assert training[0][3] == "1.00x" and all(float(cells[2]) > 0 for cells in training)
    sampling = [cells for (kind, _), cells in rows.items() if kind == "sampling"]
    assert len(sampling) == 2 and sampling[0][1].startswith("seed loop") and sampling[1][1].startswith("pipeline")
    assert all(float(cells[2]) > 0 for cells in sampling) and sampling[1][3].endswith("x")
    student = [cells for (kind, _), cells in rows.items() if kind == "sampling, as a distilled student"]
    assert len(student) == 1 and "2 steps" in student[0][1] and "(2 UNet evals/image)" in student[0][1]
    assert float(student[0][2]) > 0 and student[0][5] == "speed only (undistilled weights)"
    for name in ("model_cost.json", "training_speed.json", "sampling_speed.log", "student_sampling_speed.log"):
        assert os.path.getsize(tmp_path / name) > 0


def test_gpu_suite_refuses_unknown_arguments():
    result = subprocess.run(["bash", os.path.join(REPO, "benchmarks", "gpu_suite.sh"), "--fast"], cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "unknown argument --fast" in result.stderr
