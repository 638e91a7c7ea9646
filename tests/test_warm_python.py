"""The warm Python (tests/warm_python.py) that runs the suite's scripts: used inside tests, and a script it runs
ends as the same script run by a cold ``python`` ends (status, output, atexit, threads, signals)."""

import os
import subprocess
import sys
import textwrap

import pytest
from conftest import run_script

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
