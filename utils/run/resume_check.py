"""Resume checks its command line: a checkpoint records the flags that define the run, and a resume that
changes one is refused with one line naming it (exit 2), unless ``--allow_resume_changes``.

Data flags decide what a step is: with another batch size, process count or accumulation, step N is another
point of the run; with other data, configs, splits, resolution or seed, other images or draws. Accepted
changes (``--allow_resume_changes``) go on sensibly: the run keeps its epoch and the fraction of that epoch it
had done, the step count (and the LR schedule with it) is rescaled to the new steps per epoch, and the change
is logged and recorded in every later checkpoint (``resume_changes`` in training_state.json). Model flags (the
architecture) are refused even then: the checkpoint's weights do not fit another UNet.
"""

import os

DATA_FLAGS = ["train_batch_size", "num_processes", "gradient_accumulation_steps", "dataset_name",
              "dataset_config_names", "dataset_splits", "resolution", "seed", "prediction_type",
              "num_train_timesteps", "beta_schedule", "use_ema", "balance_by", "balance_power", "balance_with"]
MODEL_FLAGS = ["block_out_channels", "layers_per_block", "attention_levels", "cross_attention_dim",
               "condition_in_time_embedding", "framing_condition",
               "ema_variants"]  # ema_variants: the benchmark's EMAs, checkpointed
# What a record written before a flag existed implies (the behaviour then): a new default is a change to accept.
ABSENT_BEFORE = {"balance_by": "none", "balance_power": 0.5, "balance_with": "sampling"}
PATH_FLAGS = ["dataset_name"]  # a local folder is recorded and compared as an absolute path


def _normalised_path(value, local=False):
    """A local folder (``local``: one the run will create, e.g. --demo's data) as an absolute path, so that the
    record taken before the folder exists and the one taken after compare equal; a Hub id is left as it is."""
    if isinstance(value, str) and (local or os.path.isdir(value)):
        return os.path.abspath(value)
    return value


def record(args, num_processes, flags=DATA_FLAGS + MODEL_FLAGS):
    """The flags that define this run, as stored in each checkpoint's training_state.json (``run``).

    ``flags``: train_fairface.py's by default; distill_fairface.py passes its own."""
    values = {flag: getattr(args, flag) for flag in flags if flag != "num_processes"}
    if "ema_variants" in values:
        values["ema_variants"] = [list(variant) for variant in values["ema_variants"]]  # as JSON gives them back
    # A local folder: the same one from any working directory. --demo's data folder is local even before the
    # first run has generated it (the record is taken before the data: a refusal comes at once).
    values["dataset_name"] = _normalised_path(values["dataset_name"], local=getattr(args, "demo", False))
    values["num_processes"] = num_processes
    return values


def _show(flag, value):
    text = " ".join(map(str, value)) if isinstance(value, list) else str(value)
    return f"the process count {text}" if flag == "num_processes" else f"--{flag} {text}"


def check(state, current, allow_changes, checkpoint, flags=DATA_FLAGS + MODEL_FLAGS):
    """The accepted changes ``[(flag, old, new)]`` between a checkpoint's record and ``current`` (``record()``).

    Raises ValueError with the one-line refusal. A checkpoint without a record (written by an older version)
    gives [] and is not checked."""
    recorded = state.get("run")
    if recorded is None:
        return []
    # Normalised like record() does: a checkpoint written before it did (a first --demo run recorded its data
    # folder relative, as given) still matches the same folder.
    recorded = {flag: _normalised_path(value) if flag in PATH_FLAGS else value for flag, value in recorded.items()}
    changed = [(flag, recorded[flag], current[flag]) for flag in flags
               if flag in recorded and recorded[flag] != current[flag]]
    for flag, old, new in changed:
        if flag in MODEL_FLAGS:
            fit = "its EMA states do not fit others" if flag == "ema_variants" else \
                "its weights do not fit another architecture"
            raise ValueError(f"cannot resume from {checkpoint}: it was trained with {_show(flag, old)}, not "
                             f"{_show(flag, new)}; {fit} (start a new --output_dir)")
        if not allow_changes:
            raise ValueError(f"cannot resume from {checkpoint}: it was trained with {_show(flag, old)}, now "
                             f"{_show(flag, new)} (pass --allow_resume_changes to go on with the new value)")
    return changed


def check_or_exit(checkpoint, current, allow_changes, flags=DATA_FLAGS + MODEL_FLAGS, grad_scaler=False,
                  absent=None):
    """``check`` for the checkpoint a run resumes from (None: a new run), exit 2 with its one line if refused.

    ``flags``: as for ``record``. ``absent``: {flag: value} that a record written before the flag existed
    implies (the old behaviour), so a new default is a change to accept, not a silent switch. ``grad_scaler``:
    this run has fp16's grad scaler (fp16 on a GPU); a checkpoint written without one (bf16 or float32) has no
    scaler state for accelerate to load: refused with one line, not a file error."""
    from ..cli import fail
    from .checkpoints import read_training_state

    if checkpoint is None:
        return []
    if grad_scaler and not os.path.isfile(os.path.join(checkpoint, "scaler.pt")):
        fail(f"cannot resume from {checkpoint} with --mixed_precision fp16: it was trained without fp16's grad "
             "scaler (bf16 or float32) and holds no scaler state; resume with the --mixed_precision it was "
             "trained with, or start a new --output_dir")
    state = read_training_state(checkpoint)
    recorded = dict(state.get("run") or {})
    if recorded:
        recorded = {**ABSENT_BEFORE, **(absent or {}), **recorded}
    if "framing_condition" not in recorded:  # recorded before the flag existed: the saved encoder tells
        framing = _trained_with_framing(checkpoint)
        if framing is not None:
            recorded["framing_condition"] = framing
    try:
        return check({**state, "run": recorded}, current, allow_changes, checkpoint, flags)
    except ValueError as error:
        fail(str(error))


def _trained_with_framing(checkpoint):
    """Whether the checkpoint's condition encoder has framing rows (None: no encoder config to read)."""
    import json

    try:
        with open(os.path.join(checkpoint, "condition_encoder", "config.json")) as f:
            return bool(json.load(f).get("framings"))
    except (OSError, ValueError):
        return None


def describe(changes):
    return "; ".join(f"{_show(flag, old)} -> {_show(flag, new).replace('the process count ', '')}"
                     for flag, old, new in changes)


def rescaled_step(global_step, old_steps_per_epoch, steps_per_epoch):
    """The step of the new run geometry at the same epoch and fraction of it as ``global_step`` of the old."""
    if not old_steps_per_epoch or old_steps_per_epoch == steps_per_epoch:
        return global_step
    epoch, done = divmod(global_step, old_steps_per_epoch)
    return epoch * steps_per_epoch + done * steps_per_epoch // old_steps_per_epoch


def shift_lr_schedule(lr_scheduler, steps):
    """Move a diffusers (LambdaLR) schedule by ``steps`` and set the optimizer's learning rates to match."""
    lr_scheduler.last_epoch += steps
    for group, rate, base in zip(lr_scheduler.optimizer.param_groups, lr_scheduler.lr_lambdas, lr_scheduler.base_lrs):
        group["lr"] = base * rate(lr_scheduler.last_epoch)
    lr_scheduler._last_lr = [group["lr"] for group in lr_scheduler.optimizer.param_groups]


def go_on(state, changes, steps_per_epoch, lr_scheduler, warn):
    """After loading a checkpoint: the step to go on from (rescaled when accepted changes alter the steps per
    epoch, the LR schedule moved with it). Warns about an unchecked old checkpoint and about the changes."""
    global_step = state["global_step"]
    if "run" not in state:
        warn("this checkpoint was written before command lines were recorded: the resume is not checked")
    if not changes:
        return global_step
    step = rescaled_step(global_step, state.get("steps_per_epoch"), steps_per_epoch)
    shift_lr_schedule(lr_scheduler, step - global_step)
    warn(f"resuming with changed flags ({describe(changes)}): the data order follows the new flags; step "
         f"{global_step} ({state.get('steps_per_epoch')} steps per epoch) goes on as step {step} ({steps_per_epoch} "
         "per epoch)")
    return step


def history(state, changes, global_step):
    """The accepted changes of this run so far, as recorded in each checkpoint (``resume_changes``)."""
    return state.get("resume_changes", []) + [{"step": global_step, "flag": flag, "old": old, "new": new}
                                              for flag, old, new in changes]


def skipped_before(state, epoch, is_main_process):
    """Unusable images this run's checkpoint had counted in ``epoch`` before it was saved (counted once, on the
    main process), so that the epoch's report after a mid-epoch resume covers the whole epoch."""
    saved_epoch, count = state.get("skipped_images", (None, 0))
    return count if saved_epoch == epoch and is_main_process else 0


# Optimiser and EMA settings are no part of the run record: a resume applies the new values (logged), since
# lowering --learning_rate and resuming is what a run stopped by non-finite losses is told to do
# (train_fairface.py), and the checkpoint's optimizer, LR-schedule and EMA states would otherwise silently keep
# the old ones.
OPTIMIZER_SETTINGS = {"adam_beta1": ("betas", 0), "adam_beta2": ("betas", 1), "adam_epsilon": ("eps", None),
                      "adam_weight_decay": ("weight_decay", None)}
EMA_SETTINGS = {"ema_decay": "decay", "ema_power": "power"}


def apply_new_settings(args, lr_scheduler, emas, warn):
    """After loading a checkpoint: the command line's --learning_rate, Adam betas/eps/weight decay and
    --ema_decay/--ema_power replace the checkpoint's, from this step on (the LR schedule keeps its position and
    shape, scaled to the new peak); the changes are warned about and returned as [(flag, old, new)]."""
    changes = []
    groups = lr_scheduler.optimizer.param_groups
    old_lr = lr_scheduler.base_lrs[0]
    if old_lr != args.learning_rate:
        lr_scheduler.base_lrs = [args.learning_rate] * len(groups)
        for group in groups:
            group["initial_lr"] = args.learning_rate
        shift_lr_schedule(lr_scheduler, 0)  # this step's rate from the new peak
        changes.append(("learning_rate", old_lr, args.learning_rate))
    for flag, (key, index) in OPTIMIZER_SETTINGS.items():
        new = getattr(args, flag)
        for group in groups:
            old = group[key] if index is None else group[key][index]
            if old != new:
                if index is None:
                    group[key] = new
                else:
                    values = list(group[key])
                    values[index] = new
                    group[key] = tuple(values)
                if (flag, old, new) not in changes:
                    changes.append((flag, old, new))
    for flag, attribute in EMA_SETTINGS.items():
        new = getattr(args, flag, None)  # distill_fairface.py's --ema_decay is its target network's: recorded
        for ema in emas.values():
            old = getattr(ema, attribute)
            if old != new:
                setattr(ema, attribute, new)
                if (flag, old, new) not in changes:
                    changes.append((flag, old, new))
    if changes:
        warn(f"resuming with new settings, applied from this step on: {describe(changes)}")
    return changes
