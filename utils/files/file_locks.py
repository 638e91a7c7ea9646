"""File locks (``flock``) that tell "held by another process" apart from "this file system cannot lock".

Used for the run lock of --output_dir (utils/run/run_folder.py) and the pixel-cache builds (utils/data/pixel_cache.py).
``flock`` fails with EWOULDBLOCK/EAGAIN when another process holds the lock; any other error (ENOLCK on NFS
without a lock daemon, ENOSYS on Lustre mounted without ``flock``, EOPNOTSUPP on some FUSE file systems) means
the file system cannot lock at all, and is reported as that (``LocksUnavailable``), with what the user can do:
move the folder to a file system that locks, or set ``FAIRFACE_NO_FILE_LOCKS=1`` to go on without locks at
their own risk (nothing then stops two runs writing one folder). Which file systems give real exclusion:
docs/reliability.md. fcntl exists on Linux and macOS only: elsewhere (Windows) the locks raise
``LocksUnavailable`` saying so, and the scripts still import.
"""

import errno
import os

try:
    import fcntl
except ImportError:  # Windows: no flock
    fcntl = None

NO_LOCKS_ENV = "FAIRFACE_NO_FILE_LOCKS"  # "1": go on without file locks (a file system that cannot lock)
HELD = {errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES}  # EACCES: some systems' word for "held" (POSIX locks)


class LocksUnavailable(OSError):
    """The file system (or the operating system) cannot take file locks here; the message (``strerror``, also
    ``str()``) says what to do."""

    def __str__(self):
        return self.strerror


def locks_disabled():
    return os.environ.get(NO_LOCKS_ENV, "").strip().lower() in ("1", "true", "yes")


def lock(handle, blocking=False):
    """``flock`` ``handle`` exclusively. Returns True when locked (or locks are disabled by NO_LOCKS_ENV), False
    when another process holds it (only with ``blocking=False``); raises LocksUnavailable when it cannot lock."""
    if locks_disabled():
        return True
    if fcntl is None:
        raise LocksUnavailable(errno.ENOSYS, "fairface-diffusion's training and upload scripts run on Linux and "
                               "macOS (they lock folders with fcntl.flock); on Windows use WSL")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
    except OSError as error:
        if error.errno in HELD and not blocking:
            return False
        path = getattr(handle, "name", "the lock file")
        name = errno.errorcode.get(error.errno, str(error.errno))
        raise LocksUnavailable(error.errno, f"cannot lock {path}: the file system does not support file locks "
                               f"({name}: {error.strerror}); move --output_dir (and --preprocess_cache) to one "
                               f"that does (docs/reliability.md), or set {NO_LOCKS_ENV}=1 to go on without locks at "
                               "your own risk (nothing then stops a second run writing the same folder)") from None
    return True
