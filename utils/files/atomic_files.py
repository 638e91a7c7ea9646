"""Atomic files and folders: written under a temporary name, flushed to disk, then renamed into place.

A process killed at any moment leaves either the old version or the new one, never a half-written file; after
a power loss the renamed file holds its data, not zeros (fsync before the rename, and of the folder after).
"""

import json
import os
import shutil

from .faults import fault_hook


class SaveError(OSError):
    """Writing a checkpoint, snapshot or release failed (disk full, permissions, ...); earlier outputs are intact."""


def save_folder_atomic(path, write):
    """Call ``write(tmp_path)`` then rename tmp_path to ``path`` (replacing it): never a half-written folder.

    Raises SaveError (after removing tmp_path) if writing fails with an OSError (disk full, ...)."""
    parent, name = os.path.split(os.path.abspath(path))
    tmp = os.path.join(parent, f".tmp-{name}")
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        write(tmp)
        fault_hook(name)
        fsync_tree(tmp)
        replace_folder(tmp, path)
    except OSError as error:
        shutil.rmtree(tmp, ignore_errors=True)
        raise SaveError(f"could not write {path}: {error.strerror or error}") from error


def replace_folder(tmp, final):
    """Rename ``tmp`` to ``final``; an existing ``final`` is first renamed aside (instant), then deleted."""
    old = None
    if os.path.isdir(final):
        old = os.path.join(os.path.dirname(final), ".old-" + os.path.basename(final))
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    fsync_dir(os.path.dirname(final))
    if old:
        shutil.rmtree(old, ignore_errors=True)


def fsync_tree(folder):
    """Flush every file under ``folder`` to disk: after a crash, a renamed folder holds its data, not zeros."""
    for root, _, files in os.walk(folder):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(root)


def fsync_dir(folder):
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems cannot fsync directories
    finally:
        os.close(fd)


def write_file_atomic(path, write, mode="w"):
    """``write(f)`` into ``PATH.tmp`` (opened with ``mode``: "w" text, "wb" bytes), flushed to disk, renamed."""
    with open(f"{path}.tmp", mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(f"{path}.tmp", path)


def write_json_atomic(path, data):
    write_file_atomic(path, lambda f: json.dump(data, f, indent=2))


def update_digest(digest, path):
    """Feed the bytes of the file ``path`` to ``digest`` (a hashlib object), 1 MiB at a time; returns it. One
    reading of a weight file's SHA-256 for the student card and the generated dataset's provenance."""
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest

