"""No idle cores (issue 13): under ``accelerate launch`` without a config (the README's quick start), a CPU run
uses this process's share of the cores, not accelerate's default OMP_NUM_THREADS=1; a user's own
OMP_NUM_THREADS is kept. The run reports the torch thread count it trains with."""

import os
import re
import subprocess
import sys

import pytest

from conftest import REPO, TINY_MODEL_ARGS

pytestmark = pytest.mark.e2e  # every test here trains a model or runs a script


def launch(demo_dataset, tmp_path, user_threads=None):
    """``accelerate launch train_fairface.py`` for one step, from a clean environment as a user's shell has it."""
    env = {key: value for key, value in os.environ.items() if key != "OMP_NUM_THREADS"}
    env["HF_HOME"] = str(tmp_path / "hf")  # accelerate's default config lives there: none, as on a new machine
    if user_threads:
        env["OMP_NUM_THREADS"] = str(user_threads)
    command = [sys.executable, "-m", "accelerate.commands.launch", os.path.join(REPO, "train_fairface.py"),
               "--dataset_name", demo_dataset, "--output_dir", tmp_path / f"run-{user_threads}", *TINY_MODEL_ARGS,
               "--max_train_steps", "1", "--train_batch_size", "4", "--num_inference_steps", "1"]
    result = subprocess.run([str(part) for part in command], cwd=REPO, capture_output=True, text=True, env=env,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return result.stdout + result.stderr


def threads_used(output):
    match = re.search(r"(\d+) torch threads per process", output)
    assert match, output[-3000:]
    return int(match.group(1))


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="Linux: the launcher is read from /proc")
def test_accelerate_launch_without_config_uses_every_core(demo_dataset, tmp_path):
    output = launch(demo_dataset, tmp_path)
    assert "not the launcher's default OMP_NUM_THREADS=1" in output or len(os.sched_getaffinity(0)) == 1
    assert threads_used(output) == len(os.sched_getaffinity(0))


def test_a_users_omp_num_threads_is_kept(demo_dataset, tmp_path):
    output = launch(demo_dataset, tmp_path, user_threads=1)
    assert "launcher's default" not in output
    assert threads_used(output) == 1
