"""Diffusion objectives (utils.run.objective): min-SNR weights, the v-prediction target, and a v-prediction run (issue 7)."""

import json
import math
import os
import types

import pytest
import torch
from diffusers import DDPMScheduler

from utils.run import objective
from utils.model.pipeline import SCHEDULERS, generate, load_pipeline

GAMMA = 5.0
TIMESTEPS = [0, 10, 200, 500, 800, 999]  # SNR from ~1e5 (far above gamma) down to ~0 (far below)


def scheduler(prediction_type="epsilon", **kwargs):
    return DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2",
                         prediction_type=prediction_type, **kwargs)


def cosine_alpha_bar(t, steps=1000):
    """alpha_bar of the squaredcos_cap_v2 schedule, recomputed by hand (Nichol & Dhariwal 2021, betas capped at 0.999)."""
    f = lambda s: math.cos((s / steps + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    product = 1.0
    for i in range(t + 1):
        product *= 1.0 - min(1.0 - f(i + 1) / f(i), 0.999)
    return product


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_min_snr_weights_equal_hand_computed_values(prediction_type):
    noise_scheduler = scheduler(prediction_type)
    weights = objective.loss_weights(noise_scheduler, torch.tensor(TIMESTEPS), GAMMA)
    snrs = []
    for t, weight in zip(TIMESTEPS, weights.tolist()):
        # The schedule is the cosine one (checked against the formula); the weights use its float32 values, whose
        # 1 - alpha_bar near t = 0 carries a relative error of ~1e-3, so SNR is taken from them.
        alpha_bar = noise_scheduler.alphas_cumprod[t].item()
        assert alpha_bar == pytest.approx(cosine_alpha_bar(t), abs=1e-6)
        snr = alpha_bar / (1.0 - alpha_bar)
        snrs.append(snr)
        expected = min(snr, GAMMA) / snr if prediction_type == "epsilon" else min(snr, GAMMA) / (snr + 1.0)
        assert weight == pytest.approx(expected, rel=1e-4), (t, snr)
    assert max(snrs) > GAMMA > min(snrs)  # both sides of the clamp were exercised
    if prediction_type == "epsilon":
        assert weights[-1].item() == pytest.approx(1.0)  # SNR < gamma: plain epsilon loss


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_weights_are_ones_when_min_snr_is_off(prediction_type):
    weights = objective.loss_weights(scheduler(prediction_type), torch.tensor(TIMESTEPS), None)
    assert weights.shape == (len(TIMESTEPS),) and torch.equal(weights, torch.ones(len(TIMESTEPS)))


def test_v_target_round_trips_to_x0_and_noise():
    torch.manual_seed(0)
    v_scheduler = scheduler("v_prediction")
    timesteps = torch.tensor(TIMESTEPS)
    x0 = torch.rand(len(TIMESTEPS), 3, 8, 8) * 2 - 1
    noise = torch.randn_like(x0)
    noisy = v_scheduler.add_noise(x0, noise, timesteps)
    v = objective.diffusion_target(v_scheduler, x0, noise, timesteps)
    a = v_scheduler.alphas_cumprod[timesteps].view(-1, 1, 1, 1)
    torch.testing.assert_close(a.sqrt() * noisy - (1 - a).sqrt() * v, x0, atol=1e-5, rtol=0)
    torch.testing.assert_close((1 - a).sqrt() * noisy + a.sqrt() * v, noise, atol=1e-5, rtol=0)
    # epsilon models: the target is the noise itself
    assert objective.diffusion_target(scheduler("epsilon"), x0, noise, timesteps) is noise


@pytest.mark.parametrize("t", [10, 500, 990])
def test_scheduler_step_with_true_v_matches_step_with_true_epsilon(t):
    torch.manual_seed(t)
    v_scheduler, eps_scheduler = scheduler("v_prediction"), scheduler("epsilon")
    timestep = torch.tensor([t])
    x0 = torch.rand(2, 3, 8, 8) * 2 - 1
    noise = torch.randn_like(x0)
    noisy = eps_scheduler.add_noise(x0, noise, timestep)
    v = objective.diffusion_target(v_scheduler, x0, noise, timestep)
    by_v = v_scheduler.step(v, t, noisy, generator=torch.Generator().manual_seed(1))
    by_eps = eps_scheduler.step(noise, t, noisy, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(by_v.pred_original_sample, by_eps.pred_original_sample, atol=1e-4, rtol=0)
    torch.testing.assert_close(by_v.pred_original_sample, x0, atol=1e-4, rtol=0)
    torch.testing.assert_close(by_v.prev_sample, by_eps.prev_sample, atol=1e-4, rtol=0)


@pytest.fixture(scope="module")
def v_run(tiny_run):
    """A run trained with --prediction_type v_prediction: the session's tiny run (conftest.tiny_run) passes it."""
    return tiny_run


@pytest.mark.e2e
def test_v_prediction_run_saves_and_samples_with_v_prediction(v_run):
    with open(os.path.join(v_run, "scheduler", "scheduler_config.json")) as f:
        assert json.load(f)["prediction_type"] == "v_prediction"
    pipe = load_pipeline(v_run)
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    for name in SCHEDULERS:  # every sampler keeps the trained parameterisation
        assert pipe.set_scheduler(name).scheduler.config.prediction_type == "v_prediction", name
    images = generate(pipe.set_scheduler("dpm++"), [(3, 0, 2), (None, 1, None)], [0, 1], num_inference_steps=5)
    assert [image.size for image in images] == [(32, 32)] * 2


@pytest.mark.e2e
@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_pipeline_interprets_the_unet_output_as_v(v_run, name):
    """An oracle UNet that returns the exact v of a known image: sampling must end on that image. Read as
    epsilon (the pipeline ignoring the saved prediction type), the same output would give a different image."""
    pipe = load_pipeline(v_run).set_scheduler(name)
    alphas_cumprod = pipe.scheduler.alphas_cumprod
    x0 = torch.linspace(-0.8, 0.8, 32).view(1, 1, 1, 32).expand(1, 3, 32, 32)  # a horizontal grey ramp

    def oracle(sample, timestep, encoder_hidden_states=None, **kwargs):
        a = alphas_cumprod[int(timestep)].to(sample.dtype)
        noise = (sample - a.sqrt() * x0) / (1 - a).sqrt()
        return types.SimpleNamespace(sample=a.sqrt() * noise - (1 - a).sqrt() * x0)

    pipe.unet.forward = oracle
    step, predicted_x0 = pipe.scheduler.step, []

    def recording_step(*args, **kwargs):  # DDPM/DDIM also return their x0 estimate: it must be right at every step
        output = step(*args, **kwargs)
        predicted_x0.append(getattr(output, "pred_original_sample", None))
        return output

    pipe.scheduler.step = recording_step
    image = pipe(conditions=[(0, 0, 0)], generator=torch.Generator().manual_seed(0), num_inference_steps=10,
                 output_type="pt", show_progress=False).images
    torch.testing.assert_close(image, x0, atol=0.02, rtol=0)
    assert len(predicted_x0) == 10
    for estimate in predicted_x0:
        if estimate is not None:  # (their last step recovers x0 from almost any output: checking each step)
            torch.testing.assert_close(estimate, x0, atol=0.02, rtol=0)
