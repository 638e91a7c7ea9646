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
import json
import os
import signal
import socket
import sys
import time

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
    request_id = f"worker-{os.getpid()}"
    request = {"id": request_id, "argv": argv, "cwd": os.getcwd(), "env": dict(os.environ), "new_session": True,
               "watch": os.getpid()}
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
        connection.connect(socket_path)
        socket.send_fds(connection, [(json.dumps(request) + "\n").encode()], [0, 1, 2])
        script_session.append(int(connection.makefile("r").readline()))
    for sig in pending:
        forward(sig, None)
    status_path = os.path.join(status_dir, request_id)
    while not os.path.exists(status_path):
        time.sleep(0.02)
    with open(status_path) as f:
        code = int(f.read())
    if code < 0:  # killed by a signal: so is this process, with the default action
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    os._exit(code & 0xFF)


if __name__ == "__main__":
    main()
