"""A Python with the libraries already imported, that forks a fresh process for each script run (a "zygote").

Each script the tests run as a user would (``python train_fairface.py ...``) used to pay 5-12 s of imports (torch,
diffusers, transformers, datasets) before doing anything, about 150 times a suite. This server imports them once,
then forks one child per run: the child is a process of its own (its pid, session, cwd, environment, argv, stdout
and stderr files, exit status, signals) that runs the script as ``__main__`` and exits as Python exits (atexit,
non-daemon threads joined, an uncaught exception's traceback and status 1), without the interpreter's teardown of
every loaded module (3 s a run). Only the import of the libraries is shared, and this repository's own modules are
imported afresh by every child.

The tests call ``start`` (below), which returns a Popen-like ``WarmProcess``, or None where the run needs a cold
Python: an environment that differs from the tests' own in a variable the libraries read at import (HF_HOME, a
PYTHONPATH), or FAIRFACE_TEST_COLD=1 (every run cold: how to check that a failure is not this server's). The
server, ``python tests/warm_python.py SOCKET STATUS_DIR``, is started on the first run and reads one JSON request
per connection on its Unix socket; the reply is the child's pid. When a child ends, its
``os.waitstatus_to_exitcode`` is written to STATUS_DIR/<request id>. It exits when its parent (pytest) is gone.
"""

import atexit
import collections
import contextlib
import importlib
import itertools
import json
import os
import runpy
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = ("train_fairface", "sample_fairface", "make_grid", "generate_dataset", "distill_fairface",
           "evaluate_fairface", "evaluate_cas")
# Imported inside functions by the scripts or by the libraries on first use (trackers, evaluation models, Parquet).
LAZY = ("datasets", "pyarrow.parquet", "transformers", "torch.utils.tensorboard", "safetensors.torch",
        "accelerate.utils", "diffusers.schedulers", "scipy.linalg", "tqdm.auto", "PIL.Image")


def preload():
    """Import what the scripts import, then forget this repository's modules (each child imports them anew, so
    their import-time state is a child's own) while the libraries stay loaded."""
    sys.path.insert(0, REPO)
    for name in (*SCRIPTS, *LAZY):
        try:
            importlib.import_module(name)
        except Exception as error:  # a missing optional library: that child imports (and fails) as it would
            print(f"warm_python: not preloaded {name}: {error}", file=sys.stderr)
    ours = [name for name, module in sys.modules.items()
            if name in SCRIPTS or name == "utils" or name.startswith("utils.")
            or os.path.dirname(getattr(module, "__file__", None) or "/") == REPO]
    for name in ours:
        del sys.modules[name]
    sys.path.remove(REPO)


def run_child(request):
    """In the forked child: become the script's process, run it as __main__, exit as `python script` exits."""
    if request["new_session"]:
        os.setsid()
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    if request.get("stdio"):  # a torchrun worker's own three streams (tests/warm_worker.py), passed over the socket
        stdin, stdout, stderr = request["stdio"]
    else:
        stdin = os.open(os.devnull, os.O_RDONLY)
        stdout = os.open(request["stdout"], os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        stderr = stdout if request["stderr"] == request["stdout"] else os.open(
            request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    for fd, target in ((stdin, 0), (stdout, 1), (stderr, 2)):
        os.dup2(fd, target)
    for fd in {stdin, stdout, stderr} - {0, 1, 2}:  # the script's process holds only its three standard streams
        os.close(fd)
    if request.get("watch"):
        die_with(request["watch"])
    os.close(request["started"])  # the server replies now: a signal sent from here on reaches this session
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    threads = os.environ.get("OMP_NUM_THREADS")
    if threads and threads.isdigit():  # what OpenMP reads at start-up; no parallel region has run before the fork
        import torch
        torch.set_num_threads(int(threads))
    script = request["argv"][0]
    sys.argv = list(request["argv"])
    sys.path[0] = os.path.dirname(os.path.realpath(script))
    if os.environ.get("PYTHONPATH") == REPO:  # as Python puts it: after the script's folder (_differences allows it)
        sys.path.insert(1, REPO)
    code, killed_by = 0, None
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as exit_:
        code = exit_code(exit_.code)
    except KeyboardInterrupt:  # uncaught: Python prints it, then dies of SIGINT (status -2)
        sys.excepthook(*sys.exc_info())
        killed_by = signal.SIGINT
    except BaseException:
        sys.excepthook(*sys.exc_info())
        code = 1
    leave(code, killed_by)


def die_with(pid):
    """A torchrun worker's script runs here while torchrun holds its stand-in (tests/warm_worker.py): when that
    process dies (SIGKILL from torchrun or a test), this one's process group is killed too, as the worker's
    would be."""
    try:
        watched = os.pidfd_open(pid)
    except ProcessLookupError:
        os.killpg(0, signal.SIGKILL)
    except OSError:  # no pidfd (Linux before 5.3, a seccomp filter): ask every 0.1 s instead
        watched = None

    def watch():
        if watched is not None:
            select.select([watched], [], [])
        else:
            with contextlib.suppress(ProcessLookupError):
                while True:
                    os.kill(pid, 0)
                    time.sleep(0.1)
        os.killpg(0, signal.SIGKILL)

    threading.Thread(target=watch, daemon=True, name="warm_python.die_with").start()


def exit_code(value):
    """The status ``sys.exit(value)`` gives: None 0, an int itself, anything else printed and 1."""
    if value is None or isinstance(value, int):
        return value or 0
    print(value, file=sys.stderr)
    return 1


def leave(code, killed_by=None):
    """Exit as the interpreter does, minus its teardown of every loaded module (about 3 s with torch, diffusers and
    transformers loaded, at every run): non-daemon threads joined, atexit callbacks (loggers, trackers, temporary
    folders), the standard streams flushed, then the status. A script's own files are closed by the script."""
    threading._shutdown()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    if killed_by is not None:  # as Python ends after an uncaught KeyboardInterrupt
        signal.signal(killed_by, signal.SIG_DFL)
        os.kill(os.getpid(), killed_by)
    os._exit(code & 0xFF)


def reap(status_dir, children):
    """Write the exit status of every child that ended (negative: killed by that signal, as Popen says)."""
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        request_id = children.pop(pid, None)
        if request_id is not None:
            path = os.path.join(status_dir, request_id)
            with open(path + ".tmp", "w") as f:
                f.write(str(os.waitstatus_to_exitcode(status)))
            os.replace(path + ".tmp", path)


def receive(connection):
    """One request (a JSON line) and the file descriptors sent with it (a torchrun worker's standard streams)."""
    data, fds, _, _ = socket.recv_fds(connection, 1 << 20, 3)
    while not data.endswith(b"\n"):
        more = connection.recv(1 << 20)
        if not more:
            break
        data += more
    return json.loads(data), fds


def serve(socket_path, status_dir):
    parent = os.getppid()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(socket_path)
    listener.listen(16)
    listener.settimeout(0.02)
    children = {}
    print("ready", json.dumps(dict(os.environ)), flush=True)  # with what its imports set (TORCHINDUCTOR_CACHE_DIR)
    while os.getppid() == parent:
        reap(status_dir, children)
        try:
            connection, _ = listener.accept()
        except socket.timeout:
            continue
        connection.settimeout(None)
        try:
            handle(connection, listener, children)
        except (OSError, ValueError) as error:  # a client that died mid-request, or fork failed: serve the next
            print(f"warm_python: request failed: {error!r}", file=sys.stderr, flush=True)
        finally:
            connection.close()


def handle(connection, listener, children):
    """Fork the child a request asks for; reply with its pid once it is in its own session (signals land)."""
    fds = []
    try:
        request, fds = receive(connection)
        if fds:
            request["stdio"] = fds
        sys.stdout.flush()
        sys.stderr.flush()
        started, request["started"] = os.pipe()
        pid = os.fork()
        if pid == 0:
            listener.close()
            connection.close()
            os.close(started)
            run_child(request)  # never returns: the child leaves through SystemExit or an exception
        children[pid] = request["id"]
        os.close(request["started"])
        os.read(started, 1)  # end of file: the child closed its end (or died)
        os.close(started)
        connection.sendall(f"{pid}\n".encode())
    finally:
        for fd in fds:
            os.close(fd)


# ------------------------------------------------------------------------------------------------ client (pytest)
# Read at run time, not at import: a child may differ from the tests' environment in these (and FAIRFACE_TEST_*).
# PYTEST_CURRENT_TEST: pytest sets it for every test, so a child sees the test it runs for, as a cold one would.
# GRADIO_ANALYTICS_ENABLED: app.py sets it when a test imports it; gradio is not preloaded (a child reads it itself).
RUN_TIME_VARIABLES = ("OMP_NUM_THREADS", "ACCELERATE_USE_CPU", "PYTEST_CURRENT_TEST", "GRADIO_ANALYTICS_ENABLED")
SERVER_ENV = dict(os.environ)  # the tests' environment as tests/conftest.py set it (before any monkeypatch)
RUNS = collections.Counter()  # "warm", or "cold: <the variables that made it cold>": the suite's summary prints it
_server = {}
_request_ids = itertools.count()


class WarmProcess:
    """The part of subprocess.Popen the tests use, for a child of the server (not of this process)."""

    def __init__(self, args, pid, status_path):
        self.args, self.pid, self.returncode, self._status_path = args, pid, None, status_path

    def poll(self):
        if self.returncode is None and os.path.exists(self._status_path):
            with open(self._status_path) as f:
                self.returncode = int(f.read())
        return self.returncode

    def wait(self, timeout=None):
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(self.args, timeout)
            time.sleep(0.02)
        return self.returncode

    def send_signal(self, sig):
        if self.poll() is None:
            os.kill(self.pid, sig)

    def terminate(self):
        self.send_signal(signal.SIGTERM)

    def kill(self):
        self.send_signal(signal.SIGKILL)


def _differences(env, server_env):
    """The variables in which ``env`` is not the server's, but for those read at run time: a value must be the tests'
    environment's, or the server's own after its imports (the tests import the same libraries, which set the same
    variables)."""
    keys = set(env) | set(SERVER_ENV) | set(server_env)
    return sorted(key for key in keys if env.get(key) not in (SERVER_ENV.get(key), server_env.get(key))
                  and key not in RUN_TIME_VARIABLES and not key.startswith("FAIRFACE_TEST_")
                  and not (key == "PYTHONPATH" and env.get(key) == REPO))  # this repository only: no sitecustomize


def _cold(reason):
    RUNS[f"cold: {reason}"] += 1


def _connect():
    """The server: {socket, status_dir, env, pid}, started on first use; None if it cannot start."""
    if "socket" not in _server:
        folder = tempfile.mkdtemp(prefix="fairface-warm-")
        socket_path, status_dir = os.path.join(folder, "socket"), os.path.join(folder, "status")
        os.mkdir(status_dir)
        log = open(os.path.join(folder, "server.log"), "w")
        process = subprocess.Popen([sys.executable, os.path.abspath(__file__), socket_path, status_dir],
                                   stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL, text=True,
                                   env=SERVER_ENV)
        atexit.register(process.kill)
        word, _, server_env = process.stdout.readline().partition(" ")
        if word == "ready":
            _server.update(socket=socket_path, status_dir=status_dir, env=json.loads(server_env), pid=process.pid)
        else:
            _server.update(socket=None)
            print(f"warm_python: the server did not start (see {log.name}); scripts run cold", file=sys.stderr)
    return _server if _server["socket"] else None


def server_for(env):
    """The server ({socket, status_dir, env}) if a Python started with ``env`` may be its child, else None (the
    reason is counted in RUNS)."""
    if os.environ.get("FAIRFACE_TEST_COLD") == "1":
        return _cold("FAIRFACE_TEST_COLD=1")
    # A variable the test itself changed needs a cold run: known before the server is started (13 s of imports).
    differences = _differences(env, dict(os.environ))
    server = None if differences else _connect()
    if server is not None:
        differences = _differences(env, server["env"])
    if differences or server is None:
        return _cold(", ".join(differences) or "no server")
    return server


def start(argv, cwd, env, stdout, stderr=None, new_session=False):
    """Run ``python *argv`` as a child of the server: a WarmProcess, or None (run it cold) where ``env`` needs it.
    ``stdout``/``stderr``: file paths the child appends to (the same path for both: one log)."""
    server = server_for(env)
    if server is None:
        return None
    RUNS["warm"] += 1
    socket_path, status_dir = server["socket"], server["status_dir"]
    request_id = str(next(_request_ids))
    request = dict(id=request_id, argv=[str(a) for a in argv], cwd=str(cwd), env=env, stdout=str(stdout),
                   stderr=str(stderr or stdout), new_session=new_session)
    pid = fork_script(socket_path, request)
    return WarmProcess(request["argv"], pid, os.path.join(status_dir, request_id))


def fork_script(socket_path, request, fds=()):
    """Send one request (and ``fds``, the standard streams of a torchrun worker's stand-in) to the server; the pid
    of the child it forked."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
        connection.connect(socket_path)
        message = (json.dumps(request) + "\n").encode()
        if fds:
            socket.send_fds(connection, [message], list(fds))
        else:
            connection.sendall(message)
        return int(connection.makefile("r").readline())


def run(argv, cwd, env, timeout):
    """Like subprocess.run(capture_output=True, text=True): a CompletedProcess, or None to run it cold."""
    with tempfile.TemporaryDirectory(prefix="fairface-warm-run-") as folder:
        out, err = os.path.join(folder, "stdout"), os.path.join(folder, "stderr")
        process = start(argv, cwd, env, out, err)
        if process is None:
            return None
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
            raise
        texts = []
        for path in (out, err):
            with open(path, errors="replace") if os.path.exists(path) else open(os.devnull) as f:
                texts.append(f.read())
        return subprocess.CompletedProcess(process.args, process.returncode, *texts)


if __name__ == "__main__":
    preload()
    serve(sys.argv[1], sys.argv[2])
