"""Training pieces that the script should not have to spell out: loss, per-step randomness, checkpoints, signals.

Exact resume is by construction: the data order depends only on (seed, epoch) (``utils.data.EpochSampler``)
and every random draw of a training step (timesteps, noise, flips, condition dropout) comes from a generator
seeded with (seed, global step, micro-batch, rank). A resumed run therefore replays exactly the draws the
uninterrupted run would have made, whatever state the global RNGs or data-loader workers are in.
"""

import argparse
import errno
import json
import os
import re
import shutil
import signal
import sys
import time

import torch
import torch.nn.functional as F
from diffusers.training_utils import EMAModel, compute_snr

from .data import to_model_range

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
TRAINING_STATE = "training_state.json"  # written last: its presence marks a complete checkpoint


# ---------------------------------------------------------------------------------------------- the step
def step_generator(seed, global_step, micro_step, rank, device):
    """The generator for one micro-batch's random draws; a pure function of its arguments (exact resume)."""
    generator = torch.Generator(device=device)
    generator.manual_seed((((seed * 1_000_003 + global_step) * 256 + micro_step) * 4096 + rank) % (2**63 - 1))
    return generator


def prepare_batch(pixels, attributes, generator, random_flip, cond_drop_prob, attr_drop_prob, framing_drop_prob=None):
    """Images in [-1, 1] (optionally flipped) and attributes with dropped entries set to -1 (unknown).

    ``attributes`` (batch, 3 or 4): a fourth column, the framing, is dropped with ``framing_drop_prob`` (default:
    ``attr_drop_prob``); the whole condition, framing included, with ``cond_drop_prob``."""
    batch = pixels.shape[0]
    images = to_model_range(pixels)
    if random_flip:
        flip = torch.rand(batch, generator=generator, device=images.device) < 0.5
        images = torch.where(flip[:, None, None, None], images.flip(-1), images)
    drop_probs = torch.full(attributes.shape[1:], float(attr_drop_prob), device=attributes.device)
    if attributes.shape[1] > 3 and framing_drop_prob is not None:
        drop_probs[3] = framing_drop_prob
    drop_attr = torch.rand(attributes.shape, generator=generator, device=attributes.device) < drop_probs
    drop_all = torch.rand(batch, 1, generator=generator, device=attributes.device) < cond_drop_prob
    attributes = torch.where(drop_attr | drop_all, torch.full_like(attributes, -1), attributes)
    return images, attributes


def loss_weights(noise_scheduler, timesteps, snr_gamma):
    """Per-sample min-SNR-gamma weights (Hang et al. 2023); ones when ``snr_gamma`` is None.

    epsilon: min(SNR, gamma) / SNR; v_prediction: min(SNR, gamma) / (SNR + 1), which is the same weighting of
    the underlying x0 error expressed for a v target.
    """
    if snr_gamma is None:
        return torch.ones(timesteps.shape, device=timesteps.device)
    snr = compute_snr(noise_scheduler, timesteps)
    clipped = torch.clamp(snr, max=snr_gamma)
    if noise_scheduler.config.prediction_type == "v_prediction":
        return clipped / (snr + 1)
    return clipped / snr


def diffusion_target(noise_scheduler, images, noise, timesteps):
    if noise_scheduler.config.prediction_type == "v_prediction":
        return noise_scheduler.get_velocity(images, noise, timesteps)
    return noise


def weighted_mse(prediction, target, weights):
    """Mean over pixels, weighted per sample; samples with weight 0 (unusable images) contribute nothing."""
    per_sample = F.mse_loss(prediction.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
    return (per_sample * weights).sum() / weights.sum().clamp(min=1.0)


# ------------------------------------------------------------------------------------------- checkpoints
class SaveError(OSError):
    """Writing a checkpoint or snapshot failed (disk full, permissions, ...); earlier outputs are intact."""


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
    return sorted(found)


def resolve_checkpoint(output_dir, resume_from_checkpoint):
    """Path to resume from: ``latest`` = newest complete checkpoint (None if there is none yet)."""
    if resume_from_checkpoint == "latest":
        checkpoints = list_checkpoints(output_dir)
        return checkpoints[-1][1] if checkpoints else None
    if not os.path.isfile(os.path.join(resume_from_checkpoint, TRAINING_STATE)):
        raise ValueError(f"{resume_from_checkpoint} is not a complete checkpoint (no {TRAINING_STATE})")
    return resume_from_checkpoint


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
            _replace_folder(tmp, final)
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
        _replace_folder(tmp, path)
    except OSError as error:
        shutil.rmtree(tmp, ignore_errors=True)
        raise SaveError(f"could not write {path}: {error.strerror or error}") from error


def _replace_folder(tmp, final):
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


def write_json_atomic(path, data):
    with open(f"{path}.tmp", "w") as f:
        json.dump(data, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(f"{path}.tmp", path)


def fault_hook(where):
    """Test hook (tests/test_resume.py, test_reliability.py, test_faults.py): ``FAIRFACE_TEST_SAVE_FAULT=WHERE:ACTION``.

    WHERE: a step number (inside the temporary folder of checkpoint-STEP), a snapshot name (``epoch_2``, inside
    its temporary folder), ``pixel-cache`` (after the first cached batch), ``release`` (the new release written,
    not yet committed) or ``release-moves`` (committed, moving into the root; ``utils/release.py``).
    ACTION: ``pause`` waits there until a stop signal (at most 60 s), ``hold`` waits 60 s whatever comes (to
    kill the run there), ``wait:PATH`` until the file PATH exists (at most 300 s), ``kill`` SIGKILLs this
    process at once, ``enospc`` fails like a full disk."""
    target, _, action = os.environ.get("FAIRFACE_TEST_SAVE_FAULT", "").partition(":")
    if target != where:
        return
    if action == "enospc":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    deadline = time.monotonic() + (300 if action.startswith("wait:") else 60)
    while time.monotonic() < deadline and not (action == "pause" and StopRequest.received is not None):
        if action.startswith("wait:") and os.path.exists(action[5:]):
            break
        time.sleep(0.02)


# ------------------------------------------------------------------------------------------------- EMA
def build_emas(models, decay, power=2 / 3):
    """{name: EMAModel} of ``models`` ({name: model}) with diffusers' warm-up: the decay at step t is
    min(``decay``, 1 - (1 + t) ** -``power``), so early averages do not drag in the random initialisation."""
    return {name: EMAModel(model.parameters(), decay=decay, use_ema_warmup=True, power=power, model_cls=type(model),
                           model_config=model.config) for name, model in models.items()}


def ema_variant(text):
    """``DECAY:POWER`` (e.g. ``0.9999:0.75``) -> (decay, power); argparse type of the hidden --ema_variants."""
    try:
        decay, power = (float(v) for v in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected DECAY:POWER such as 0.9999:0.75, got {text!r}") from None
    return decay, power


def load_ema(ema, folder):
    """Load an EMAModel saved by ``EMAModel.save_pretrained`` from safetensors only (never unpickles a .bin,
    unlike ``EMAModel.from_pretrained``); the shadow weights end up on the device they were on before."""
    _, ema_kwargs = ema.model_cls.from_config(folder, return_unused_kwargs=True)
    model = ema.model_cls.from_pretrained(folder, use_safetensors=True)
    device = ema.shadow_params[0].device
    ema.load_state_dict({**ema_kwargs, "shadow_params": [p.detach().to(device) for p in model.parameters()]})


# ------------------------------------------------------------------------------------------- preemption
class StopRequest:
    """SIGTERM/SIGINT ask the run to stop after the current optimizer step (checkpoint, clean exit);
    a second signal exits at once. Data-loader workers ignore both (``utils.data.ignore_stop_signals``)."""

    received = None  # the first signal's number, for code without the instance (the save test hook)

    def __init__(self):
        self.signal = StopRequest.received = None
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        if self.signal is not None:
            sys.stderr.write(f"\nsecond {signal.Signals(signum).name}: exiting now without saving\n")
            os._exit(128 + signum)
        self.signal = StopRequest.received = signum
        sys.stderr.write(f"\n{signal.Signals(signum).name} received: stopping after this step and saving a "
                         "checkpoint (send it again to exit at once)\n")

    @property
    def name(self):
        return signal.Signals(self.signal).name if self.signal else "a signal to another process"

    def agreed(self, accelerator, all_ranks_here=True):
        """True on every rank if any rank was signalled (all ranks must stop at the same step).

        With several processes the agreement is an all-reduce and a host sync, so the loop asks only at steps
        where every rank asks too (``all_ranks_here``: logging steps, checkpoints, epoch ends) and gets False
        elsewhere; a lone process just reads its flag."""
        if accelerator.num_processes == 1:
            return self.signal is not None
        if not all_ranks_here:
            return False
        flag = torch.tensor([0.0 if self.signal is None else 1.0], device=accelerator.device)
        return bool(accelerator.reduce(flag, reduction="sum").item() > 0)


def sum_over_ranks(accelerator, count):
    """An integer summed over all processes (every rank must call it)."""
    return int(accelerator.reduce(torch.tensor([count], device=accelerator.device), "sum").item())


def log_images(accelerator, images, step, tag="samples"):
    """Sample images to the trackers that take images (TensorBoard, W&B)."""
    import numpy as np

    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.writer.add_images(tag, np.stack([np.asarray(i) for i in images]), step, dataformats="NHWC")
        elif tracker.name == "wandb":
            import wandb

            tracker.log({tag: [wandb.Image(i) for i in images]}, step=step)
