"""Faults where users run (issue 21): the quick start's own resume command, diffusers' callback convention,
strict JSON, fp16 grad scaling, shared file systems, `latest` and the process-group timeout across ranks.

Runs are real subprocesses (tests/test_resume.py's helpers); a fault is planted through the test hook
``FAIRFACE_TEST_SAVE_FAULT`` (utils/faults.py) or a stand-in for the operating-system call that fails.
"""

import os
import shlex
import signal
import subprocess
import sys

import pytest

from conftest import REPO
from test_resume import finish, output_of, resumed_from, saving, wait_for

TINY_DEMO = ["--num_epochs", "1", "--max_train_steps", "4", "--checkpointing_steps", "2", "--report_to", "none",
             "--block_out_channels", "16", "32", "--cross_attention_dim", "16", "--num_inference_steps", "2"]


# ------------------------------------------------------------------------------------------------ quick start
def test_quick_start_resumes_with_the_command_it_prints(tmp_path):
    """A first `--demo` run (its data not generated yet) stopped by Ctrl-C prints how to resume; that exact
    command, from the same folder, resumes (it was refused: the record held the relative data path)."""
    command = [sys.executable, os.path.join(REPO, "train_fairface.py"), "--demo", *TINY_DEMO]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FAIRFACE_TEST_SAVE_FAULT": "2:pause"}
    log = tmp_path / "1.log"
    with open(log, "w") as out:
        process = subprocess.Popen(command, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT, env=env,
                                   start_new_session=True)
    process.log_path = log
    wait_for(saving(str(tmp_path / "fairface-demo"), 2), process, "checkpoint-2")
    os.killpg(process.pid, signal.SIGINT)
    code, output = finish(process)
    assert code == 0, output[-4000:]
    hint = "Resume with the same command plus "
    assert hint in output, output[-4000:]
    extra = shlex.split(output.split(hint, 1)[1].splitlines()[0])
    assert extra == ["--resume_from_checkpoint", "latest"]
    resumed = subprocess.run(command + extra, cwd=tmp_path, capture_output=True, text=True, timeout=600,
                             env={**env, "FAIRFACE_TEST_SAVE_FAULT": ""})
    output = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, output[-4000:]
    assert resumed_from(output) == f"resumed from fairface-demo/checkpoint-2 at step 2"
    assert "done: 4 steps" in output
