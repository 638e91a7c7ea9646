"""Guidance on an interval of noise levels, and sampling defaults saved with the model (issue 13).

Outside ``guidance_interval`` a step computes only the conditional prediction (a UNet batch of n instead of
2n). An interval covering every step is today's sampler, bit for bit; an empty one is the unguided sampler.
Pipelines trained now save their sampler settings in model_index.json; older ones keep 25 steps, guidance 2.
"""

import json
import shutil

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

import sample_fairface
from conftest import parse_error, run_script
from utils.labels import UNKNOWN, decode_condition
from utils.model.pipeline import (LEGACY_SAMPLING_DEFAULTS, SAMPLING_DEFAULTS, FairFacePipeline,
                                  conditions_to_tensor, denoise, generate, load_pipeline)

CONDITIONS, SEEDS = [decode_condition(42), (None, 1, None)], [0, 1]


def unet_batches(pipe):
    """The batch size of every UNet call the pipeline makes from now on."""
    batches = []
    pipe.unet.register_forward_pre_hook(lambda module, args: batches.append(args[0].shape[0]))
    return batches


def sample(pipe, **kwargs):
    return torch.stack(generate(pipe, CONDITIONS, SEEDS, output_type="pt", **kwargs))


def seed_commit_sampler(pipe, steps, guidance_scale):
    """The pipeline's loop before issue 13, written out: batched guidance on every step."""
    generators = [torch.Generator("cpu").manual_seed(s) for s in SEEDS]
    attributes = conditions_to_tensor(CONDITIONS)
    tokens = torch.cat([pipe.condition_encoder(torch.full_like(attributes, UNKNOWN)), pipe.condition_encoder(attributes)])
    size = pipe.unet.config.sample_size
    latents = randn_tensor((len(SEEDS), 3, size, size), generator=generators) * pipe.scheduler.init_noise_sigma
    pipe.scheduler.set_timesteps(steps)
    with torch.no_grad():
        for t in pipe.scheduler.timesteps:
            uncond, cond = denoise(pipe.unet, pipe.scheduler.scale_model_input(torch.cat([latents] * 2), t), t,
                                   tokens).chunk(2)
            latents = pipe.scheduler.step(uncond + guidance_scale * (cond - uncond), t, latents).prev_sample
    return latents.clamp(-1, 1)


@pytest.fixture
def old_release(tiny_run, tmp_path):
    """The tiny run's pipeline as saved before sampling defaults existed: no "sampling_defaults" entry."""
    folder = tmp_path / "old"
    shutil.copytree(tiny_run, folder, ignore=shutil.ignore_patterns("epoch_*", "checkpoint-*", "logs", "*.png"))
    index = json.loads((folder / "model_index.json").read_text())
    del index["sampling_defaults"]
    (folder / "model_index.json").write_text(json.dumps(index))
    return str(folder)


# ---------------------------------------------------------------------------------------------- the interval
@pytest.mark.e2e
def test_guidance_only_on_the_steps_inside_the_interval(tiny_run):
    pipe = load_pipeline(tiny_run)
    pipe.scheduler.set_timesteps(6)
    timesteps = pipe.scheduler.timesteps.tolist()  # high noise first
    batches = unet_batches(pipe)
    sample(pipe, num_inference_steps=6, guidance_scale=2.0, guidance_interval=(timesteps[4], timesteps[1]))
    assert batches == [2, 4, 4, 4, 4, 2]  # 2 images: guided steps batch the null and conditional predictions


@pytest.mark.e2e
def test_interval_over_every_step_is_the_old_sampler_bitwise(tiny_run):
    pipe = load_pipeline(tiny_run)
    expected = seed_commit_sampler(pipe, 5, 3.0)
    batches = unet_batches(pipe)
    for every_step in [(0, float("inf")), (0, 999)]:
        assert torch.equal(sample(pipe, num_inference_steps=5, guidance_scale=3.0, guidance_interval=every_step),
                           expected)
    assert batches == [4] * 10


@pytest.mark.e2e
def test_empty_interval_is_the_unguided_sampler_bitwise(tiny_run):
    pipe = load_pipeline(tiny_run)
    unguided = sample(pipe, num_inference_steps=5, guidance_scale=1.0)
    batches = unet_batches(pipe)
    empty = sample(pipe, num_inference_steps=5, guidance_scale=3.0, guidance_interval=(2000, 3000))
    assert torch.equal(empty, unguided) and batches == [2] * 5
    guided = sample(pipe, num_inference_steps=5, guidance_scale=3.0, guidance_interval=(0, 999))
    assert (guided - unguided).abs().max() > 0.05  # guidance does change the images


@pytest.mark.e2e
def test_bad_interval_is_a_value_error(tiny_run):
    pipe = load_pipeline(tiny_run)
    for bad in [(500, 100), (1, 2, 3)]:
        with pytest.raises(ValueError, match="guidance_interval"):
            sample(pipe, num_inference_steps=2, guidance_interval=bad)


# ---------------------------------------------------------------------------------------------- saved defaults
@pytest.mark.e2e
def test_training_saves_the_sampling_defaults_and_from_pretrained_uses_them(tiny_run):
    index = json.loads(open(f"{tiny_run}/model_index.json").read())
    expected = dict(SAMPLING_DEFAULTS, guidance_interval=SAMPLING_DEFAULTS["guidance_interval"] and
                    list(SAMPLING_DEFAULTS["guidance_interval"]))
    assert index["sampling_defaults"] == expected
    # Plain diffusers (the release ships its pipeline code; our own loader never runs it) gets them too.
    pipe = DiffusionPipeline.from_pretrained(tiny_run, trust_remote_code=True)
    assert pipe.config.sampling_defaults == expected
    assert pipe.sampling_settings() == load_pipeline(tiny_run).sampling_settings()
    # A call without sampler arguments takes them: as many steps, guided where the interval says.
    pipe = load_pipeline(tiny_run)
    settings = pipe.sampling_settings()
    low, high = settings["guidance_interval"] or (0, 999)
    pipe.scheduler.set_timesteps(settings["num_inference_steps"])
    expected_batches = [4 if low <= t <= high else 2 for t in pipe.scheduler.timesteps]
    batches = unet_batches(pipe)
    assert torch.equal(sample(pipe), sample(pipe, **settings))
    assert batches == expected_batches * 2


@pytest.mark.e2e
def test_custom_defaults_round_trip_through_save_pretrained(tiny_run, tmp_path):
    pipe = load_pipeline(tiny_run)
    mine = dict(num_inference_steps=3, guidance_scale=2.5, guidance_interval=(300.0, 999.0))
    FairFacePipeline(pipe.unet, pipe.scheduler, pipe.condition_encoder, sampling_defaults=mine).save_pretrained(
        tmp_path / "mine")
    loaded = load_pipeline(str(tmp_path / "mine"))
    assert loaded.sampling_settings() == mine
    assert loaded.sampling_settings(num_inference_steps=7, guidance_interval=(0, float("inf")))["guidance_interval"] \
        == (0.0, 999.0)
    batches = unet_batches(loaded)
    assert torch.equal(sample(loaded), sample(pipe, **mine)) and len(batches) == 3


@pytest.mark.e2e
def test_old_release_keeps_the_old_defaults(old_release):
    pipe = load_pipeline(old_release)
    assert pipe.sampling_settings() == LEGACY_SAMPLING_DEFAULTS == dict(num_inference_steps=25, guidance_scale=2.0,
                                                                        guidance_interval=None)
    expected = seed_commit_sampler(pipe, 25, 2.0)
    batches = unet_batches(pipe)
    assert torch.equal(sample(pipe), expected) and batches == [4] * 25


# ---------------------------------------------------------------------------------------------- the command line
@pytest.mark.e2e
def test_cli_defaults_come_from_the_model_and_flags_override_them(tiny_run, old_release, tmp_path):
    result = run_script("sample_fairface.py", "--model", old_release, "--condition", "42", "--num_images", "1",
                        "--output_dir", tmp_path / "old")
    assert "25 steps, guidance 2 on every step" in result.stdout
    steps = SAMPLING_DEFAULTS["num_inference_steps"]
    result = run_script("sample_fairface.py", "--model", tiny_run, "--condition", "42", "--num_images", "1",
                        "--output_dir", tmp_path / "new")
    assert f"{steps} steps, guidance {SAMPLING_DEFAULTS['guidance_scale']:g}" in result.stdout
    paths = sample_fairface.main(sample_fairface.parse_args(
        ["--model", tiny_run, "--condition", "42", "--seeds", "0", "--num_inference_steps", "4", "--guidance_interval",
         "500", "inf", "--output_dir", str(tmp_path / "flags")]))
    expected = generate(load_pipeline(tiny_run), [decode_condition(42)], [0], num_inference_steps=4,
                        guidance_interval=(500, 999))[0]
    with Image.open(paths[0]) as image:
        assert np.array_equal(np.asarray(image), np.asarray(expected))


@pytest.mark.parametrize("script, values", [
    ("sample_fairface.py", ["800", "200"]), ("sample_fairface.py", ["-1", "200"]),
    ("sample_fairface.py", ["low", "high"]), ("make_grid.py", ["9", "1"]), ("train_fairface.py", ["nan", "5"]),
])
def test_bad_guidance_interval_flag_exits_2_with_one_line(script, values):
    code, stderr = parse_error(script, "--condition" if script == "sample_fairface.py" else "--seed", "0",
                               "--guidance_interval", *values)
    assert code == 2 and stderr.count("\n") == 1, stderr
    assert "--guidance_interval needs two timesteps 0 <= LO <= HI" in stderr
