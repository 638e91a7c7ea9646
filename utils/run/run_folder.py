"""One run per output folder: a lock held for the whole run, and the cleanup of what killed runs left behind.

``claim(accelerator, output_dir)`` is called by every process before anything is written to ``--output_dir``.
The global main process (only global rank 0, so the nodes of one multi-node run never lock each other out)
takes an ``fcntl.flock`` on ``output_dir/.run-lock`` and writes the holder (pid, host, start time, command)
into it. Every rank learns the result by broadcast: a second run into a folder that a live run holds exits 2
on every rank with one line naming the folder and the holder, and the live run never notices. The kernel drops
a flock when its process dies, however it dies (SIGKILL, OOM killer), so a killed run never blocks the next.

Once the lock is taken, the same process removes the temporary folders of killed runs (``.tmp-*``, ``.old-*``)
and finishes a release that a kill interrupted (``utils.hub.release.finish``).
"""

import datetime
import json
import os
import shlex
import shutil
import socket
import sys

from ..files import file_locks

LOCK_FILE = ".run-lock"
LEFTOVER_PREFIXES = (".tmp-", ".old-", ".write-test-")  # checkpoint/snapshot/release temporaries, rename-asides
_held = {}  # output folder (absolute) -> open lock file: kept open, and so locked, until the process exits


class FolderInUse(Exception):
    """Another live process holds the run lock of this folder."""


def lock(output_dir):
    """Take the run lock of ``output_dir`` for this process's lifetime; raise FolderInUse if another holds it."""
    path = os.path.join(os.path.abspath(output_dir), LOCK_FILE)
    if path in _held:
        return
    handle = open(path, "a+")
    try:
        locked = file_locks.lock(handle)  # LocksUnavailable: a file system that cannot lock, said as such
    except file_locks.LocksUnavailable:
        handle.close()
        raise
    if not locked:
        handle.seek(0)
        holder = handle.read().strip()
        handle.close()
        try:
            info = json.loads(holder)
            holder = f"pid {info['pid']} on {info['host']}, started {info['started']}"
        except (ValueError, KeyError, TypeError):
            holder = "another process"
        raise FolderInUse(f"{output_dir} is in use by another run ({holder}); wait for it to end, or choose "
                          "another --output_dir") from None
    handle.seek(0)
    handle.truncate()
    handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                             "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                             "command": shlex.join(sys.argv)}))
    handle.flush()
    _held[path] = handle


def remove_leftovers(output_dir):
    """Delete the temporary folders and files that killed runs left in ``output_dir``; returns their names."""
    from ..hub.release import PENDING

    removed = []
    for name in sorted(os.listdir(output_dir)):
        if name.startswith(LEFTOVER_PREFIXES) and name != PENDING:
            path = os.path.join(output_dir, name)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                try:
                    os.remove(path)
                except OSError:
                    continue
            removed.append(name)
    return removed


def claim(accelerator, output_dir):
    """Lock ``output_dir`` for this run (global rank 0), tell every rank, then tidy up after killed runs.

    If the folder is in use, every rank exits 2 with the same one-line error (``utils.cli.fail``)."""
    from accelerate.utils import broadcast_object_list

    from ..hub import release
    from ..cli import fail

    refusal = None
    if accelerator.is_main_process:
        try:
            lock(output_dir)
        except (FolderInUse, file_locks.LocksUnavailable, OSError) as error:
            refusal = str(error)
    if refusal is None and accelerator.is_main_process:
        removed = remove_leftovers(output_dir)
        try:
            if release.finish(output_dir):
                removed.append(f"{release.PENDING} (finished the interrupted release)")
        except OSError as error:
            refusal = f"could not finish the interrupted release in {output_dir}: {error.strerror or error}"
        if removed:
            print(f"cleaned up after an interrupted run in {output_dir}: {', '.join(removed)}")
    if accelerator.num_processes > 1:  # the other ranks learn the outcome
        refusal = broadcast_object_list([refusal], from_process=0)[0]
    if refusal:
        fail(refusal)
