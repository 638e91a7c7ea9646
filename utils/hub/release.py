"""The release at the root of --output_dir, replaced as a whole: never files of two releases mixed.

The root also holds checkpoints, snapshots and logs, so a release cannot be swapped in by one rename. Instead:

1. ``write(folder)`` fills ``.tmp-release/`` (plus ``.release-files.json``, the list of its entries), fsynced.
   A kill or a full disk here leaves the previous release untouched; the next start deletes the leftover.
2. ``.tmp-release`` is renamed to ``.release-new`` (one atomic rename): the commit point. From here on the new
   release is complete in ``.release-new`` and ``utils.model.pipeline.load_pipeline`` loads it from there.
3. ``finish``: the previous release's entries are moved aside, the new ones hard-linked into the root (no
   data is copied, so a full disk cannot stop it halfway), the list last; then ``.release-new`` is renamed away
   and deleted. A kill anywhere in 3 is finished by the next start of a run on the folder (or by
   ``python -m utils.hub``): the steps are idempotent.

So the root loads (with our loaders) as the previous release until the commit and as the new one after it.
Only a program that reads the root directly while step 3 runs (milliseconds), or after a kill in it before
the next start, can see entries of both.
"""

import errno
import json
import os
import shutil

from ..files import atomic_files, faults
from ..model.pipeline import PENDING_RELEASE as PENDING, RELEASE_MANIFEST as MANIFEST

TEMPORARY = ".tmp-release"
# The entries of a release written before the list existed (their names are all the previous version wrote).
LEGACY_ENTRIES = ["model_index.json", "unet", "condition_encoder", "scheduler", "samples.png", "README.md"]


def publish(root, write):
    """Write a new release with ``write(folder)`` and make it the root's release (steps 1-3 above).

    Raises atomic_files.SaveError (one line) if writing fails; the previous release is then untouched (failure in
    step 1) or the new one is complete and finished by the next start (step 3)."""
    tmp = os.path.join(root, TEMPORARY)
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        write(tmp)
        names = sorted(os.listdir(tmp))
        atomic_files.write_json_atomic(os.path.join(tmp, MANIFEST), names)
        faults.fault_hook("release")
        atomic_files.fsync_tree(tmp)
    except OSError as error:
        shutil.rmtree(tmp, ignore_errors=True)
        raise atomic_files.SaveError(f"could not write the release in {root}: {error.strerror or error} (the "
                                 "previous release, checkpoints and snapshots are untouched)") from error
    os.replace(tmp, os.path.join(root, PENDING))
    atomic_files.fsync_dir(root)
    try:
        finish(root)
    except OSError as error:
        raise atomic_files.SaveError(f"could not finish the release in {root}: {error.strerror or error} (the new "
                                 f"release is complete in {PENDING}/; rerun the same command with "
                                 "--resume_from_checkpoint latest to finish it)") from error


def entries(folder):
    """The names of the release entries listed in ``folder`` (a root or a new release); [] if none."""
    try:
        with open(os.path.join(folder, MANIFEST)) as f:
            return list(json.load(f))
    except FileNotFoundError:
        return [name for name in LEGACY_ENTRIES if os.path.lexists(os.path.join(folder, name))]


def finish(root):
    """Move a committed new release (``.release-new``) into the root; returns False if there is none."""
    pending = os.path.join(root, PENDING)
    if not os.path.isfile(os.path.join(pending, MANIFEST)):
        if os.path.isdir(pending):  # cannot happen (renamed complete); if it does, it is no release
            shutil.rmtree(pending)
        return False
    new = entries(pending)
    aside = _empty_folder(root, ".old-release")
    for name in sorted(set(entries(root)) | set(new)):
        target = os.path.join(root, name)
        if os.path.lexists(target):
            os.replace(target, os.path.join(aside, name))
        faults.fault_hook("release-moves")
        if name in new:
            _link_tree(os.path.join(pending, name), target)
    _link_tree(os.path.join(pending, MANIFEST), os.path.join(root, MANIFEST + ".tmp"))
    os.replace(os.path.join(root, MANIFEST + ".tmp"), os.path.join(root, MANIFEST))
    atomic_files.fsync_dir(root)
    done = _empty_folder(root, ".old-release-new", create=False)
    os.replace(pending, done)  # the root alone is the release now
    atomic_files.fsync_dir(root)
    shutil.rmtree(done, ignore_errors=True)
    shutil.rmtree(aside, ignore_errors=True)
    return True


def _empty_folder(root, name, create=True):
    """``root/name`` emptied (created when ``create``), or, where what is left there cannot be removed, another
    fresh ``name-N``: on NFS a file that a reader still has open stays as ``.nfsXXXX`` until it is closed (the
    old release's weights, say), and must not stop every later release. Leftovers are removed by the next start
    (utils/run/run_folder.py: ``.old-*``)."""
    for attempt in range(100):
        path = os.path.join(root, name if attempt == 0 else f"{name}-{os.getpid()}-{attempt}")
        shutil.rmtree(path, ignore_errors=True)
        if not os.path.lexists(path):
            if create:
                os.makedirs(path)
            return path
    raise OSError(errno.EEXIST, f"cannot empty {os.path.join(root, name)} or make a fresh folder beside it")


def _link_or_copy(source, target):
    try:
        os.link(source, target)
    except OSError as error:
        if error.errno == errno.ENOSPC:
            raise
        shutil.copy2(source, target)  # a file system without hard links


def _link_tree(source, target):
    if os.path.lexists(target) and not os.path.isdir(target):
        os.remove(target)
    if os.path.isdir(source):
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(source, target, copy_function=_link_or_copy)
    else:
        _link_or_copy(source, target)
