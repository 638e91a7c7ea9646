"""The processes of a generate_dataset.py run: their group (``--ddp_timeout``), the device each draws on, and the
end of a run where one process failed.

Group. accelerate's ``PartialState`` is the process group: every barrier and broadcast waits up to
``--ddp_timeout`` seconds (rank 0 alone builds the training pool's features for ``--check_memorisation`` while
the others wait; NCCL's default of 600 s ended such runs).

Device. One process draws on ``--device`` as given (``cuda:1`` is the second GPU). Several processes draw on one
device each, the launcher's (``cuda:LOCAL_RANK``): ``--device`` names only the kind there.

A failed process. A process whose shard cannot be written (a full disk) ends with its one-line error, exit 2.
Under ``torchrun`` / ``accelerate launch`` the launcher then stops the others (SIGTERM, then SIGKILL); a process
that reaches the last barrier first finds the group broken (gloo: "Connection closed by peer") and ends with one
line too, not a traceback. Either way the run ends at once, not after ``--ddp_timeout``; its finished shards are
kept for the rerun.
"""

import torch

from ..cli import fail, first_line
from ..run.distributed import broken_group_line, process_group_kwargs


def start_processes(args):
    """(PartialState, this process's torch.device) for ``args.device`` and ``args.ddp_timeout``; one line and exit
    2 for a device the processes cannot share."""
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    # cpu: gloo (PartialState, unlike Accelerator, does not read ACCELERATE_USE_CPU itself). The timeout goes to
    # init_process_group as PartialState's own keyword (what Accelerator does with its InitProcessGroupKwargs), and
    # always: the handler's to_kwargs() leaves out a value equal to its default (600 s), and gloo's own is 1800 s.
    timeout = process_group_kwargs(args.ddp_timeout).timeout
    state = PartialState(cpu=args.device.type == "cpu" or parse_flag_from_env("ACCELERATE_USE_CPU"), timeout=timeout)
    try:
        return state, process_device(args.device, state.device, state.num_processes)
    except ValueError as error:
        fail(str(error))


def process_device(requested, state_device, num_processes):
    """The device one process draws on: ``requested`` (--device) for a lone process; with several, the launcher's
    ``state_device`` (cuda:LOCAL_RANK) when --device names the same kind. A GPU index there would put every
    process on that one GPU: ValueError."""
    requested, state_device = torch.device(requested), torch.device(state_device)
    if num_processes == 1 or requested.type != state_device.type:
        return requested
    if requested.index is not None:
        raise ValueError(f"--device {requested}: {num_processes} processes draw on one {requested.type} device each "
                         f"(the launcher's {requested.type}:LOCAL_RANK); give --device {requested.type}, and choose "
                         "the GPUs with CUDA_VISIBLE_DEVICES or accelerate launch --gpu_ids")
    return state_device


def wait_for_everyone(state, written, timeout):
    """The barrier after the shards. A process that failed (its own one-line error is in the log) broke the group,
    or one took longer than ``timeout`` (--ddp_timeout): this one ends here with one line and exit 2 too.
    ``written``: the shards this process wrote (kept)."""
    try:
        state.wait_for_everyone()
    except RuntimeError as error:  # torch.distributed's errors (DistBackendError too) are RuntimeErrors
        what = broken_group_line(error, timeout) or f"another process of this run ended ({first_line(error)})"
        fail(f"{what}; the {written} shard(s) this process wrote are kept: rerun the same command to go on")
