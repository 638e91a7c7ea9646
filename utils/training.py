"""Training pieces that the script should not have to spell out: loss, per-step randomness, checkpoints, signals.

Exact resume is by construction: the data order depends only on (seed, epoch) (``utils.data.EpochSampler``)
and every random draw of a training step (timesteps, noise, flips, condition dropout) comes from a generator
seeded with (seed, global step, micro-batch, rank). A resumed run therefore replays exactly the draws the
uninterrupted run would have made, whatever state the global RNGs or data-loader workers are in.
"""

import json
import os
import re
import shutil
import signal
import sys

import torch
import torch.nn.functional as F
from diffusers.training_utils import compute_snr

from .data import to_model_range

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
TRAINING_STATE = "training_state.json"  # written last: its presence marks a complete checkpoint


# ---------------------------------------------------------------------------------------------- the step
def step_generator(seed, global_step, micro_step, rank, device):
    """The generator for one micro-batch's random draws; a pure function of its arguments (exact resume)."""
    generator = torch.Generator(device=device)
    generator.manual_seed((((seed * 1_000_003 + global_step) * 256 + micro_step) * 4096 + rank) % (2**63 - 1))
    return generator


def prepare_batch(pixels, attributes, generator, random_flip, cond_drop_prob, attr_drop_prob):
    """Images in [-1, 1] (optionally flipped) and attributes with dropped entries set to -1 (unknown)."""
    batch = pixels.shape[0]
    images = to_model_range(pixels)
    if random_flip:
        flip = torch.rand(batch, generator=generator, device=images.device) < 0.5
        images = torch.where(flip[:, None, None, None], images.flip(-1), images)
    drop_attr = torch.rand(attributes.shape, generator=generator, device=attributes.device) < attr_drop_prob
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
def list_checkpoints(output_dir):
    """Complete checkpoints under output_dir as [(step, path)], oldest first."""
    if not os.path.isdir(output_dir):
        return []
    found = []
    for name in os.listdir(output_dir):
        match = CHECKPOINT_PATTERN.match(name)
        path = os.path.join(output_dir, name)
        if match and os.path.isfile(os.path.join(path, TRAINING_STATE)):
            found.append((int(match.group(1)), path))
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
    """
    final = os.path.join(output_dir, f"checkpoint-{global_step}")
    tmp = os.path.join(output_dir, f".tmp-checkpoint-{global_step}")
    if accelerator.is_main_process and os.path.isdir(tmp):
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(tmp)  # every rank writes its own RNG state; the main process the rest
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_json_atomic(os.path.join(tmp, TRAINING_STATE), dict(training_state, global_step=global_step))
        if os.path.isdir(final):
            shutil.rmtree(final)
        os.replace(tmp, final)
        if total_limit:
            for _, old in list_checkpoints(output_dir)[:-total_limit]:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def save_folder_atomic(path, write):
    """Call ``write(tmp_path)`` then rename tmp_path to ``path`` (replacing it): never a half-written folder."""
    parent, name = os.path.split(os.path.abspath(path))
    tmp = os.path.join(parent, f".tmp-{name}")
    shutil.rmtree(tmp, ignore_errors=True)
    write(tmp)
    if os.path.isdir(path):
        shutil.rmtree(path)
    os.replace(tmp, path)


def write_json_atomic(path, data):
    with open(f"{path}.tmp", "w") as f:
        json.dump(data, f, indent=2)
    os.replace(f"{path}.tmp", path)


# ------------------------------------------------------------------------------------------- preemption
class StopRequest:
    """SIGTERM/SIGINT ask the run to stop after the current optimizer step (checkpoint, clean exit);
    a second signal exits at once."""

    def __init__(self):
        self.signal = None
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        if self.signal is not None:
            sys.stderr.write(f"\nsecond {signal.Signals(signum).name}: exiting now without saving\n")
            os._exit(128 + signum)
        self.signal = signum
        sys.stderr.write(f"\n{signal.Signals(signum).name} received: stopping after this step and saving a "
                         "checkpoint (send it again to exit at once)\n")

    def agreed(self, accelerator):
        """True on every rank if any rank was signalled (all ranks must stop at the same step)."""
        flag = torch.tensor([0.0 if self.signal is None else 1.0], device=accelerator.device)
        return bool(accelerator.reduce(flag, reduction="sum").item() > 0)


def log_images(accelerator, images, step, tag="samples"):
    """Sample images to the trackers that take images (TensorBoard, W&B)."""
    import numpy as np

    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.writer.add_images(tag, np.stack([np.asarray(i) for i in images]), step, dataformats="NHWC")
        elif tracker.name == "wandb":
            import wandb

            tracker.log({tag: [wandb.Image(i) for i in images]}, step=step)
