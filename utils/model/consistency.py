"""Guided consistency distillation (Song et al. 2023; the LCM recipe of diffusers' examples/consistency_distillation),
written for the teacher's own prediction type and noise schedule.

Timesteps live on a coarse grid of the teacher's training timesteps, ``k - 1, 2k - 1, ..., T - 1`` with
``k = T // num_ddim_timesteps``: the grid ``LCMScheduler`` samples from (its ``original_inference_steps``), so the
student is consistent exactly at the timesteps it is later sampled at. One distillation target:

1. noise the data at a grid point t (``add_noise`` with the teacher's alphas);
2. the teacher, with classifier-free guidance, predicts there; one DDIM step (eta 0) takes x_t to x_{t-k}
   (``ddim_step``; at t - k < 0 the clean estimate itself, DDIMScheduler's ``set_alpha_to_one``);
3. the target network (an EMA of the student) maps x_{t-k} to its clean estimate ``consistency_output``: the
   boundary condition ``c_skip(t) x_t + c_out(t) x0(t)`` with LCMScheduler's scalings, so f(x, 0) = x;
4. the student's ``consistency_output`` at x_t is pulled to it with a pseudo-Huber loss.

Every conversion goes through ``predicted_original`` with the teacher's prediction type: a v-prediction teacher
read as epsilon gives noise (latent-consistency-model issue #65). tests/test_distill.py checks ``ddim_step``
against ``DDIMScheduler.step`` and ``consistency_output`` against ``LCMScheduler.step``.

**Multistep consistency** (Heek et al. 2024; ``num_segments`` > 1): the grid is cut into equal segments and the
student maps every point of a segment to the segment's start rather than to the clean image: its clean estimate,
DDIM-stepped from x_t to the start, must land where the target network's (or, one grid step from the start, the
teacher's) path lands. The loss stays in clean-image units: ``ddim_inverse`` turns the target's landing point into
the clean estimate that reaches it from x_t. The student samples with DDIM (eta 0) through the segment starts
(``multistep_scheduler``): one evaluation per segment, each jump shorter than one straight to the clean image.
With one segment this is the LCM objective above, bit for bit.
"""

import inspect

import torch
from diffusers import DDIMScheduler, DDPMScheduler, LCMScheduler

SIGMA_DATA = 0.5  # LCMScheduler's boundary-condition constants
TIMESTEP_SCALING = 10.0


def lcm_scheduler(teacher_config, num_ddim_timesteps):
    """The student's sampler: LCMScheduler on the teacher's betas and prediction type, on the distillation grid.

    No x0 clipping: the student was trained on unclipped targets (the images are clamped at the end)."""
    accepted = inspect.signature(LCMScheduler.__init__).parameters  # the teacher's sampler has other options
    config = {k: v for k, v in teacher_config.items() if k in accepted}
    return LCMScheduler.from_config(config, original_inference_steps=num_ddim_timesteps,
                                    timestep_scaling=TIMESTEP_SCALING, clip_sample=False, thresholding=False)


def multistep_scheduler(teacher_config):
    """A multistep student's sampler: DDIM (eta 0) on the teacher's betas and prediction type, "trailing" spacing,
    so n steps visit 999, 999 - 1000/n, ...: the starts of n equal segments of the grid, and end at the clean image.

    No x0 clipping, as ``lcm_scheduler``."""
    accepted = inspect.signature(DDIMScheduler.__init__).parameters
    config = {k: v for k, v in teacher_config.items() if k in accepted}
    return DDIMScheduler.from_config(config, timestep_spacing="trailing", steps_offset=0, set_alpha_to_one=True,
                                     clip_sample=False, thresholding=False)


def segment_starts(timesteps, skip, num_ddim_timesteps, num_segments):
    """Where each grid timestep's segment starts: the grid point of the segment boundary below it, -1 (the clean
    image) for the last segment. Grid point i (timestep i * skip - 1) lies in segment (i - 1) // per."""
    per = num_ddim_timesteps // num_segments
    index = torch.div(timesteps + 1, skip, rounding_mode="floor")
    return torch.div(index - 1, per, rounding_mode="floor") * per * skip - 1


def grid_timesteps(num_train_timesteps, num_ddim_timesteps):
    """The distillation grid (LCMScheduler's): k - 1, 2k - 1, ..., num_ddim_timesteps * k - 1."""
    k = num_train_timesteps // num_ddim_timesteps
    return torch.arange(1, num_ddim_timesteps + 1) * k - 1, k


def _at(values, timesteps, like):
    return values.to(like.device)[timesteps].float().view(-1, *([1] * (like.dim() - 1)))


def predicted_original(model_output, timesteps, sample, alphas_cumprod, prediction_type):
    """(x0, epsilon) from a model output of ``prediction_type`` at integer ``timesteps`` (one per image)."""
    alpha = _at(alphas_cumprod, timesteps, sample)
    a, s = alpha.sqrt(), (1 - alpha).sqrt()
    if prediction_type == "v_prediction":
        return a * sample - s * model_output, a * model_output + s * sample
    if prediction_type == "epsilon":
        return (sample - s * model_output) / a, model_output
    if prediction_type == "sample":
        return model_output, (sample - a * model_output) / s
    raise ValueError(f"unsupported prediction type {prediction_type!r}")


def add_noise(alphas_cumprod, clean, noise, timesteps):
    """x_t = sqrt(alpha_t) x0 + sqrt(1 - alpha_t) noise, as the teacher's DDPMScheduler.add_noise."""
    alpha = _at(alphas_cumprod, timesteps, clean)
    return alpha.sqrt() * clean + (1 - alpha).sqrt() * noise


def _alpha_or_clean(alphas_cumprod, timesteps, like):
    """alphas_cumprod at ``timesteps``, 1 (the clean image, DDIMScheduler's ``set_alpha_to_one``) below 0."""
    safe = timesteps.clamp(min=0)
    return torch.where(_at(timesteps, slice(None), like) >= 0, _at(alphas_cumprod, safe, like), 1.0)


def ddim_step(x0, epsilon, previous_timesteps, alphas_cumprod):
    """DDIM (eta 0) to ``previous_timesteps`` (one per image); those below 0 get alpha 1: x0 itself."""
    alpha = _alpha_or_clean(alphas_cumprod, previous_timesteps, x0)
    return alpha.sqrt() * x0 + (1 - alpha).sqrt() * epsilon


def boundary_scalings(timesteps, like):
    """LCMScheduler's (c_skip, c_out) at integer timesteps: c_skip(0) = 1, c_out(0) = 0, c_skip ~ 0 beyond."""
    scaled = _at(timesteps, slice(None), like) * TIMESTEP_SCALING
    c_skip = SIGMA_DATA**2 / (scaled**2 + SIGMA_DATA**2)
    c_out = scaled / (scaled**2 + SIGMA_DATA**2) ** 0.5
    return c_skip, c_out


def consistency_output(model_output, timesteps, sample, alphas_cumprod, prediction_type):
    """The consistency function f(x_t, t) = c_skip(t) x_t + c_out(t) x0(t): what LCMScheduler.step calls denoised."""
    x0, _ = predicted_original(model_output, timesteps, sample, alphas_cumprod, prediction_type)
    c_skip, c_out = boundary_scalings(timesteps, sample)
    return c_skip * sample + c_out * x0


def clean_estimate(model_output, timesteps, sample, starts, alphas_cumprod, prediction_type):
    """The student's clean estimate for its segment: ``consistency_output`` where the segment ends at the clean
    image (start < 0: the boundary condition), the predicted x0 elsewhere (DDIM carries it to the start)."""
    x0, _ = predicted_original(model_output, timesteps, sample, alphas_cumprod, prediction_type)
    c_skip, c_out = boundary_scalings(timesteps, sample)
    return torch.where(_at(starts, slice(None), sample) < 0, c_skip * sample + c_out * x0, x0)


def step_to(x0, sample, timesteps, starts, alphas_cumprod):
    """DDIM (eta 0) from ``sample`` at ``timesteps`` to ``starts`` with the clean estimate ``x0`` (its noise is
    the one that x0 implies at ``sample``)."""
    alpha = _at(alphas_cumprod, timesteps, sample)
    epsilon = (sample - alpha.sqrt() * x0) / (1 - alpha).sqrt()
    return ddim_step(x0, epsilon, starts, alphas_cumprod)


def ddim_inverse(sample, timesteps, reached, starts, alphas_cumprod):
    """The clean estimate whose DDIM step from ``sample`` at ``timesteps`` to ``starts`` gives ``reached``:
    reached = a_s x0 + s_s (sample - a_t x0) / s_t, solved for x0. At starts < 0 (a_s = 1, s_s = 0): reached."""
    alpha, alpha_s = _at(alphas_cumprod, timesteps, sample), _alpha_or_clean(alphas_cumprod, starts, sample)
    ratio = (1 - alpha_s).sqrt() / (1 - alpha).sqrt()
    return (reached - ratio * sample) / (alpha_s.sqrt() - ratio * alpha.sqrt())


def pseudo_huber(prediction, target, c):
    """Per-image mean of sqrt(d^2 + c^2) - c (Song & Dhariwal 2023): L2 near 0, L1 for outliers."""
    difference = (prediction.float() - target.float()) ** 2
    return ((difference + c * c).sqrt() - c).mean(dim=tuple(range(1, prediction.dim())))


def teacher_alphas(teacher_config):
    """The teacher's alphas_cumprod (float64 -> float32 as the schedulers hold them)."""
    return DDPMScheduler.from_config(teacher_config).alphas_cumprod
