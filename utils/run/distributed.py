"""Processes on machines: CPU threads per process, and one writer per shared file across nodes.

Threads. Launched without a config, ``accelerate launch`` exports ``OMP_NUM_THREADS=1`` to a CPU process
(accelerate/commands/launch.py: ``num_cpu_threads_per_process = get_int_from_env(["OMP_NUM_THREADS"], 1)``,
raised to the core count only with ``--cpu``), and ``torchrun`` does the same for several processes per node,
so the README's quick start used one core of two. A user's own choice (``OMP_NUM_THREADS`` exported in the
shell, ``--num_cpu_threads_per_process``) is in the *launcher's* environment or command line; the launcher's
default is only in ours. Linux shows both in /proc; elsewhere nothing is changed.

Writers. With several nodes on one shared ``--output_dir`` / ``--preprocess_cache``, "local main" is not
unique: one process per node. ``in_writer_order`` runs an idempotent build-or-load step on the global main
first, then on each other node's local main (a node-local disk that does not see the first build builds its
own copy), then on every other process, which only loads. The pixel cache is built in the same order of
machines, but by all the processes of a machine together (utils/run/run_setup.py ``build_pixel_cache``).
"""

import os

import torch

LAUNCHER_THREAD_FLAGS = ("--num_cpu_threads_per_process",)  # accelerate launch's explicit thread count


def _launcher_process():
    """(environment dict, command-line args) of the parent process, or None where /proc cannot tell."""
    try:
        with open(f"/proc/{os.getppid()}/environ", "rb") as f:
            environ = dict(item.split(b"=", 1) for item in f.read().split(b"\0") if b"=" in item)
        with open(f"/proc/{os.getppid()}/cmdline", "rb") as f:
            cmdline = [part.decode(errors="replace") for part in f.read().split(b"\0") if part]
    except OSError:
        return None
    return {k.decode(errors="replace"): v.decode(errors="replace") for k, v in environ.items()}, cmdline


def launcher_default_threads():
    """True if OMP_NUM_THREADS was set by accelerate launch / torchrun as a default, not chosen by the user."""
    if "OMP_NUM_THREADS" not in os.environ:
        return False
    launched = "LOCAL_WORLD_SIZE" in os.environ or "ACCELERATE_DYNAMO_BACKEND" in os.environ
    launcher = _launcher_process() if launched else None
    if launcher is None:
        return False
    environ, cmdline = launcher
    chose = "OMP_NUM_THREADS" in environ or any(arg.split("=")[0] in LAUNCHER_THREAD_FLAGS for arg in cmdline)
    return not chose


def cores_per_local_process():
    """CPU cores this process may run on (affinity, cgroup-restricted sets), shared among this node's processes."""
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, available // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))


def use_available_cores(device, logger=None):
    """On CPU, replace a launcher's default of one thread by this process's share of the cores.

    Returns the thread count now in use, or None when nothing was changed (a GPU run, a user's choice)."""
    import torch

    if torch.device(device).type != "cpu" or not launcher_default_threads():
        return None
    threads = cores_per_local_process()
    torch.set_num_threads(threads)
    if logger is not None:
        logger.info(f"CPU: {threads} threads per process, not the launcher's default OMP_NUM_THREADS=1 (export "
                    "OMP_NUM_THREADS to choose)")
    return threads


def in_writer_order(accelerator, build_or_load):
    """``build_or_load()`` on the global main, then on other nodes' local mains, then everywhere else.

    ``build_or_load`` must write only what is missing (atomically) and otherwise load: the first call on a disk
    builds, the later ones read. Every process gets its own return value."""
    result = None
    if accelerator.is_main_process:
        result = build_or_load()
    accelerator.wait_for_everyone()
    if accelerator.is_local_main_process and not accelerator.is_main_process:
        result = build_or_load()
    accelerator.wait_for_everyone()
    if not accelerator.is_local_main_process:
        result = build_or_load()
    return result


def node_main_value(accelerator, value):
    """(this machine's local main's ``value``, this process's index on the machine, the machine's process count),
    on every process (every rank must call it). A machine's processes are consecutive global ranks (torchrun and
    accelerate launch number them so), so ``process_index - local_process_index`` names the machine."""
    if accelerator.num_processes == 1:
        return value, 0, 1
    from accelerate.utils import gather_object

    node = accelerator.process_index - accelerator.local_process_index
    everyone = gather_object([(node, accelerator.local_process_index, value)])
    mine = {local: value for other, local, value in everyone if other == node}
    return mine[0], accelerator.local_process_index, len(mine)


def sum_over_ranks(accelerator, count):
    """An integer summed over all processes (every rank must call it)."""
    return int(accelerator.reduce(torch.tensor([count], device=accelerator.device), "sum").item())


def main_process_value(accelerator, value):
    """The global main process's ``value`` on every rank (every rank must call it). For decisions that read a
    shared file system, e.g. which checkpoint is ``latest``: on NFS after a requeue, attribute caching can show
    ranks different folders, and replicas that load different checkpoints drift apart silently."""
    if accelerator.num_processes == 1:
        return value
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([value], from_process=0)[0]


def process_group_kwargs(timeout_seconds):
    """accelerate's kwargs handler that gives the process group's collectives (barriers included) this timeout:
    NCCL's default of 600 s ends the run while one machine builds the pixel cache or rank 0 pushes the release."""
    from datetime import timedelta

    from accelerate.utils import InitProcessGroupKwargs

    timeout = timedelta(seconds=timeout_seconds)
    if timeout == InitProcessGroupKwargs().timeout:  # to_kwargs() leaves out a value equal to the class default
        timeout += timedelta(microseconds=1)  # (600 s), and the backend then takes its own (gloo: 1800 s)
    return InitProcessGroupKwargs(timeout=timeout)


def leave_process_group():
    """Destroy this process's torch.distributed group, if any: the last thing a multi-process script does. A gloo
    group left to interpreter shutdown now and then aborts the process ("terminate called without an active
    exception", SIGABRT: exit -6 after all the work was done; seen in CI, stop 26). Accelerator.end_training does
    the same; this is for scripts that end otherwise (PartialState, a one-line failure)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def broken_group_line(error, timeout_seconds):
    """One line for a collective that failed because another process of the run ended (gloo: "Connection closed
    by peer"; its own error is in the log) or because the group waited longer than --ddp_timeout; None for any
    other error (a bug keeps its traceback). Every script's way out of a broken process group."""
    import torch.distributed as dist

    if not isinstance(error, RuntimeError) or not (dist.is_available() and dist.is_initialized()):
        return None
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    if not (isinstance(error, getattr(dist, "DistError", ())) or "gloo" in text or "nccl" in text.lower()):
        return None  # not the process group's (e.g. CUDA's own "launch timed out"): keeps its traceback
    reason = text.split("] ", 1)[-1].split(". ")[0]  # gloo's "[file.cc:553] Connection closed by peer [...]"
    if "timed out" in reason.lower() or "timeout" in reason.lower():
        return f"waited for the other processes longer than --ddp_timeout {timeout_seconds} s ({reason}): raise it"
    if any(sign in reason.lower() for sign in ("closed by peer", "connection reset", "broken pipe")):
        return f"another process of this run ended ({reason}; see its error)"
    return None

