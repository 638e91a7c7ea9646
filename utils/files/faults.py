"""The test hooks that plant faults: a kill, a full disk or a pause at named points of a save; a stale listing."""

import errno
import os
import signal
import time


# The ``pause`` action waits for a stop signal. utils/run/stop_signals.py's handler tells this hook (``stopping``)
# rather than the hook asking the handler: the files floor imports nothing above it.
stopping = False


def note_stop_signal(received=True):
    global stopping
    stopping = received


def fault_hook(where):
    """Test hook (tests/test_resume.py, test_reliability.py, test_faults.py): ``FAIRFACE_TEST_SAVE_FAULT=WHERE:ACTION``.

    WHERE: a step number (inside the temporary folder of checkpoint-STEP), a snapshot name (``epoch_2``, inside
    its temporary folder), ``pixel-cache`` (after each cached batch, on every process that decodes a part),
    ``pixel-cache-parts`` (every part written, before the machine's first process assembles them), ``release``
    (the new release written, not yet committed) or ``release-moves`` (committed, moving into the root;
    ``utils/hub/release.py``).
    ACTION: ``pause`` waits there until a stop signal (at most 60 s), ``hold`` waits 60 s whatever comes (to
    kill the run there), ``sleep:SECONDS`` that long, ``wait:PATH`` until the file PATH exists (at most 300 s), ``kill`` SIGKILLs this
    process at once, ``enospc`` fails like a full disk."""
    target, _, action = os.environ.get("FAIRFACE_TEST_SAVE_FAULT", "").partition(":")
    if target != where:
        return
    if action == "enospc":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if action.startswith("sleep:"):  # a slow step (a slow rank 0 while the others wait in a barrier)
        time.sleep(float(action[6:]))
        return
    deadline = time.monotonic() + (300 if action.startswith("wait:") else 60)
    while time.monotonic() < deadline and not (action == "pause" and stopping):
        if action.startswith("wait:") and os.path.exists(action[5:]):
            break
        time.sleep(0.02)


STALE_LISTING_ENV = "FAIRFACE_TEST_STALE_LISTING"


def stale_listing(checkpoints):
    """Test hook (tests/test_field_faults.py): ``FAIRFACE_TEST_STALE_LISTING=RANK`` hides the newest of the sorted
    complete ``checkpoints`` from process RANK (torchrun's ``RANK``), as a stale NFS directory cache after a
    requeue shows a folder to some nodes and not to others. Returns the listing this process sees."""
    rank = os.environ.get(STALE_LISTING_ENV)
    if rank is None or rank != os.environ.get("RANK", "0") or not checkpoints:
        return checkpoints
    print(f"test hook: rank {rank} does not see {os.path.basename(checkpoints[-1][-1])}", flush=True)
    return checkpoints[:-1]
