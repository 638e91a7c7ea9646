"""The warm Python (tests/warm_python.py) that runs the suite's scripts: used inside tests, and a script it runs
ends as the same script run by a cold ``python`` ends (status, output, atexit, threads, signals)."""

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import warm_python
from conftest import free_port, run_script, torchrun
from test_faults import workers

import utils.model.pipeline  # noqa: F401  what the tests import, as in the whole suite (its imports set variables)

pytestmark = pytest.mark.e2e  # starts the server: 10-15 s of imports, once a session

SCRIPTS = {
    "clean exit, a thread and atexit": """
        import atexit, sys, threading, time
        atexit.register(lambda: print("atexit ran"))
        threading.Thread(target=lambda: (time.sleep(0.3), print("thread joined"))).start()
        sys.stdout.write("no newline")
        """,
    "sys.exit(3)": "import sys; print('x'); sys.exit(3)",
    "sys.exit(-1)": "import sys; sys.exit(-1)",
    "sys.exit(message)": "import sys; sys.exit('a message')",
    "uncaught exception": "raise ValueError('boom')",
    "uncaught KeyboardInterrupt": "raise KeyboardInterrupt",
    "killed by SIGTERM": "import os, signal; os.kill(os.getpid(), signal.SIGTERM)",
}


def test_a_library_sets_a_variable_in_this_process():
    """gradio's Blocks (built in-process by test_distill) sets HF_HUB_DISABLE_TELEMETRY: from that test on, stop 37's
    whole suite ran every script cold. The next test checks that it does not outlive this one."""
    import gradio as gr

    before = os.environ.get("HF_HUB_DISABLE_TELEMETRY")
    with gr.Blocks():
        pass
    assert os.environ.get("HF_HUB_DISABLE_TELEMETRY") != before


def test_scripts_run_warm_inside_a_test(tmp_path):
    """A script a test runs is a child of the warm server, not a cold Python started by pytest (an environment
    variable pytest sets per test, one torch sets at import and one app.py sets once made every later run cold).
    This file runs last: what an earlier test left in the environment shows here."""
    assert os.environ.get("HF_HUB_DISABLE_TELEMETRY") == "1"  # as tests/conftest.py set it, whatever ran before
    script = tmp_path / "parent.py"
    script.write_text("import os; print(os.getppid())")
    assert int(run_script(script).stdout) != os.getpid()
    assert int(run_script(script, env={"OMP_NUM_THREADS": "1"}).stdout) != os.getpid()
    assert int(run_script(script, env={"HF_HOME": str(tmp_path)}).stdout) == os.getpid()  # read at import: cold


@pytest.mark.parametrize("name", SCRIPTS)
def test_a_warm_run_ends_as_a_cold_one(name, tmp_path):
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(SCRIPTS[name]))
    warm = run_script(script, check=False)
    cold = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert (warm.returncode, warm.stdout) == (cold.returncode, cold.stdout)
    assert warm.stderr.splitlines()[-1:] == cold.stderr.splitlines()[-1:]


RANK_SCRIPT = """
import os, signal, sys, time
rank = int(os.environ["RANK"])
print(f"rank {rank} of {os.environ['WORLD_SIZE']}, parent {os.getppid()}", flush=True)
if sys.argv[1] == "fail":
    sys.exit(3 if rank == 1 else 0)
if sys.argv[1] == "killed" and rank == 1:
    os.kill(os.getpid(), signal.SIGKILL)
with open(os.path.join(sys.argv[2], f"{rank}.pid"), "w") as f:
    f.write(str(os.getpid()))
signal.signal(signal.SIGTERM, lambda *_: (print(f"rank {rank} got SIGTERM", flush=True), sys.exit(0)))
time.sleep(120)
"""


def _torchrun_rank_script(tmp_path, mode, env):
    script = tmp_path / "ranks.py"
    script.write_text(RANK_SCRIPT)
    return torchrun(["--nproc_per_node", "2", "--master_port", free_port()], script, mode, tmp_path, env=env)


@pytest.mark.parametrize("mode, says", [("fail", "exitcode  : 3"), ("killed", "Signal 9 (SIGKILL)")])
def test_a_warm_torchrun_worker_ends_as_a_cold_one(mode, says, tmp_path):
    """conftest.torchrun: torchrun starts each worker as it starts a user's, and the worker's script runs forked from
    the warm Python; what torchrun prints and returns for a rank that exits 3 or is killed is the cold run's."""
    env = dict(os.environ)
    warm_command = _torchrun_rank_script(tmp_path, mode, env)
    assert "--no-python" in warm_command
    warm = subprocess.run(warm_command, capture_output=True, text=True, timeout=120, env=env)
    cold_command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                    str(free_port()), str(tmp_path / "ranks.py"), mode, str(tmp_path)]
    cold = subprocess.run(cold_command, capture_output=True, text=True, timeout=120, env=env)
    assert warm.returncode == cold.returncode == 1
    for result in (warm, cold):
        assert "rank 0 of 2" in result.stdout and "rank 1 of 2" in result.stdout, result.stdout
        assert says in result.stderr and "rank      : 1" in result.stderr, result.stderr[-2000:]
    parents = {line.rsplit(" ", 1)[1] for line in warm.stdout.splitlines() if line.startswith("rank ")}
    assert str(warm_python._connect()["pid"]) in parents  # forked by the server, not started by torchrun


def test_signals_to_a_warm_worker_reach_its_script(tmp_path):
    """torchrun and the tests signal a worker's process: SIGTERM is passed to the script (it handles it and the run
    ends cleanly); SIGKILL of the worker kills the script with it, as when the script is the worker."""
    env = dict(os.environ)
    with open(tmp_path / "log", "w") as log:
        launcher = subprocess.Popen(_torchrun_rank_script(tmp_path, "wait", env), stdout=log, stderr=subprocess.STDOUT,
                                    env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not all((tmp_path / f"{rank}.pid").exists() for rank in (0, 1)) and time.monotonic() < deadline:
            time.sleep(0.1)
        scripts = {rank: int((tmp_path / f"{rank}.pid").read_text()) for rank in (0, 1)}
        stand_ins = workers(launcher.pid)
        assert set(stand_ins) == {0, 1} and set(stand_ins.values()).isdisjoint(scripts.values())
        os.kill(stand_ins[1], signal.SIGKILL)
        deadline = time.monotonic() + 10
        while _alive(scripts[1]) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(scripts[1])  # rank 1's script died with its worker
        launcher.wait(60)  # torchrun saw rank 1 die and sent SIGTERM to rank 0, which handled it
        assert "rank 0 got SIGTERM" in (tmp_path / "log").read_text()
        assert not _alive(scripts[0])
    finally:
        for pid in [launcher.pid, *[int(p.read_text()) for p in tmp_path.glob("*.pid")]]:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
