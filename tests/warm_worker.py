"""A torchrun worker whose script runs forked from the warm Python (tests/warm_python.py).

``python -m torch.distributed.run ... --no-python python tests/warm_worker.py SOCKET STATUS_DIR script.py args``
(conftest.torchrun builds it): torchrun starts this small process as it starts a worker (its own session, RANK and
the rest in its environment, torchrun's streams); it asks the server to run ``script.py args`` with its cwd,
environment and three standard streams in a session of its own, forwards every signal it gets to that session,
and ends as the script ends (its status, or killed by its signal). If this process is SIGKILLed, the script's
session is killed with it (warm_python.die_with). torchrun, the signals it sends and the exit statuses it reads
are a user's; only the script's imports are shared.
"""

import contextlib
import os
import signal
import sys
import time
import uuid

import warm_python  # its client half: standard library only, imported in milliseconds

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)


def main():
    socket_path, status_dir, *argv = sys.argv[1:]
    script_session, pending = [], []

    def forward(sig, _frame):
        if not script_session:
            pending.append(sig)
        with contextlib.suppress(ProcessLookupError):
            for pid in script_session:
                os.killpg(pid, sig)

    for sig in FORWARDED:
        signal.signal(sig, forward)
    request_id = f"worker-{uuid.uuid4().hex}"
    request = {"id": request_id, "argv": argv, "cwd": os.getcwd(), "env": dict(os.environ), "new_session": True,
               "watch": os.getpid()}
    try:
        script_session.append(warm_python.fork_script(socket_path, request, fds=(0, 1, 2)))
    except (OSError, ValueError) as error:  # no server (it died): the worker torchrun would have started, cold
        print(f"warm_worker: {error!r}; running {argv[0]} cold", file=sys.stderr, flush=True)
        os.execv(sys.executable, [sys.executable, "-u", *argv])
    for sig in pending:
        forward(sig, None)
    os._exit(wait_for_status(os.path.join(status_dir, request_id), script_session[0]))


def wait_for_status(status_path, pid):
    """The script's exit status as the server wrote it; 1 if the script is gone and no status came (no server)."""
    gone_since = None
    while not os.path.exists(status_path):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            gone_since = gone_since or time.monotonic()
            if time.monotonic() - gone_since > 2:
                print(f"warm_worker: the script (pid {pid}) ended and the server wrote no status", file=sys.stderr)
                return 1
        time.sleep(0.02)
    with open(status_path) as f:
        code = int(f.read())
    os.remove(status_path)
    if code < 0:  # killed by a signal: so is this process, with the default action
        if -code not in (signal.SIGKILL, signal.SIGSTOP):
            signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
        time.sleep(1)  # a signal whose default action is not to end the process: end with 128 + its number
        return 128 - code
    return code


if __name__ == "__main__":
    main()
