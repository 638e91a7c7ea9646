"""The training objective and the randomness of one training step.

Exact resume is by construction: the data order depends only on (seed, epoch) (``utils.data.fairface.EpochSampler``)
and every random draw of a training step (timesteps, noise, flips, condition dropout) comes from a generator
seeded with (seed, global step, micro-batch, rank). A resumed run therefore replays exactly the draws the
uninterrupted run would have made, whatever state the global RNGs or data-loader workers are in.
"""

import torch
import torch.nn.functional as F
from diffusers.training_utils import compute_snr

from ..data.fairface import to_model_range


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
