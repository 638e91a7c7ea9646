"""Training checkpoints (``checkpoint-{step}/``): written atomically, listed in write order, rotated.

A checkpoint is Accelerate's ``save_state`` folder plus ``training_state.json``, written last: its presence
marks a complete checkpoint, so a run killed mid-save never leaves one that ``latest`` would pick.
"""

import json
import os
import re
import shutil

from ..files.atomic_files import SaveError, fsync_tree, replace_folder, write_json_atomic
from ..files.faults import fault_hook, stale_listing

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
TRAINING_STATE = "training_state.json"  # written last: its presence marks a complete checkpoint


def list_checkpoints(output_dir):
    """Complete checkpoints under output_dir as [(step, path)], oldest *written* first.

    Write order, not step order: after resuming from an older checkpoint, the checkpoints the abandoned run
    wrote at later steps are older than the new ones, so ``latest`` and rotation never pick them over new ones.
    """
    return [(step, path) for _, step, path in _checkpoints(output_dir)]


def _checkpoints(output_dir):
    """[(save_index, step, path)] of the complete checkpoints, sorted (save_index 0: written before it existed)."""
    if not os.path.isdir(output_dir):
        return []
    found = []
    for name in os.listdir(output_dir):
        match = CHECKPOINT_PATTERN.match(name)
        path = os.path.join(output_dir, name)
        if match and os.path.isfile(os.path.join(path, TRAINING_STATE)):
            try:
                index = int(read_training_state(path).get("save_index", 0))
            except (OSError, ValueError, AttributeError):
                continue  # an unreadable marker: not a complete checkpoint
            found.append((index, int(match.group(1)), path))
    return stale_listing(sorted(found))  # a test hook: as a stale NFS directory cache shows it on one rank


def resolve_checkpoint(output_dir, resume_from_checkpoint):
    """Path to resume from: ``latest`` = newest complete checkpoint (None if there is none yet); a name such as
    ``checkpoint-2000`` is looked up in ``output_dir`` as the diffusers examples do, unless it is a folder here."""
    if resume_from_checkpoint == "latest":
        checkpoints = list_checkpoints(output_dir)
        return checkpoints[-1][1] if checkpoints else None
    path = resume_from_checkpoint
    if not os.path.isdir(path) and os.sep not in path.rstrip(os.sep):
        path = os.path.join(output_dir, path)
    if not os.path.isfile(os.path.join(path, TRAINING_STATE)):
        raise ValueError(f"{path} is not a complete checkpoint (no {TRAINING_STATE})")
    return path


def read_training_state(checkpoint):
    with open(os.path.join(checkpoint, TRAINING_STATE)) as f:
        return json.load(f)


def save_checkpoint(accelerator, output_dir, global_step, training_state, total_limit=None):
    """``checkpoint-{step}``: written under a temporary name, renamed when complete, then old ones rotated.

    A run killed at any moment leaves the previous checkpoints intact and loadable. Returns the final path.
    Raises SaveError (after removing the temporary folder) if the disk is full or not writable.
    """
    final = os.path.join(output_dir, f"checkpoint-{global_step}")
    tmp = os.path.join(output_dir, f".tmp-checkpoint-{global_step}")
    try:
        if accelerator.is_main_process and os.path.isdir(tmp):
            shutil.rmtree(tmp)
        accelerator.wait_for_everyone()
        accelerator.save_state(tmp)  # every rank writes its own RNG state; the main process the rest
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            fault_hook(str(global_step))
            index = 1 + max((index for index, _, _ in _checkpoints(output_dir)), default=0)
            fsync_tree(tmp)
            write_json_atomic(os.path.join(tmp, TRAINING_STATE),
                              dict(training_state, global_step=global_step, save_index=index))
            replace_folder(tmp, final)
            if total_limit:
                for _, old in list_checkpoints(output_dir)[:-total_limit]:
                    if old != final:
                        shutil.rmtree(old, ignore_errors=True)
    except OSError as error:
        shutil.rmtree(tmp, ignore_errors=True)  # free the space; the previous checkpoints are untouched
        raise SaveError(f"could not write checkpoint {final}: {error.strerror or error} (earlier checkpoints are "
                        "untouched; resume from them with --resume_from_checkpoint latest)") from error
    accelerator.wait_for_everyone()
    return final
