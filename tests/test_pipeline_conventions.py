"""diffusers' pipeline conventions that FairFacePipeline keeps where diffusers' own PipelineTesterMixin checks them
(its tests are not in the pip package: tests/pipelines/test_pipelines_common.py of huggingface/diffusers), and the
steps a distilled LCM student can take. On tiny untrained pipelines (the plumbing, not the pictures), each through
our code-free loader and through the code shipped with the model (plain diffusers, ``trust_remote_code=True``).
"""

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler, DiffusionPipeline, DPMSolverMultistepScheduler

from conftest import save_tiny_pipeline
from utils.model import consistency
from utils.model.pipeline import load_pipeline

TEACHER = DDPMScheduler(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction")


def saved(folder, scheduler, **sampling_defaults):
    """An untrained 32 px pipeline with ``scheduler``, saved as training saves one (with the shipped code)."""
    return save_tiny_pipeline(folder, scheduler, **sampling_defaults)[1]


def dpm_solver():
    """The sampler training saves (DPM-Solver++, no clipping of its own) on the training noise schedule."""
    return DPMSolverMultistepScheduler.from_config(TEACHER.config)


def shipped(folder):
    return DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)


LOADERS = pytest.mark.parametrize("load", [load_pipeline, shipped], ids=["ours", "shipped"])


@pytest.fixture(scope="module")
def teacher_folder(tmp_path_factory):
    return saved(tmp_path_factory.mktemp("conventions") / "teacher", dpm_solver())


@LOADERS
def test_latent_output_is_the_sample_before_the_clamp(teacher_folder, load):
    """output_type="latent" (diffusers: the latents, before the VAE decodes them) is the final sample as a tensor,
    before the clamp to [-1, 1]: "pt" is it clamped, "np" that mapped to [0, 1], from the same seeds."""
    pipe = load(teacher_folder)
    pipe.set_progress_bar_config(disable=True)

    def draw(output_type, **kwargs):
        generators = [torch.Generator().manual_seed(seed) for seed in (0, 1)]
        return pipe(condition_ids=[42, 58], generator=generators, num_inference_steps=3, output_type=output_type,
                    **kwargs).images

    latents, pixels, arrays = draw("latent"), draw("pt"), draw("np")
    assert isinstance(latents, torch.Tensor) and latents.shape == (2, 3, 32, 32)
    assert latents.abs().max() > 1  # an untrained UNet's sample leaves [-1, 1]: the latents are not clamped
    assert torch.equal(latents.clamp(-1, 1), pixels)
    np.testing.assert_allclose(((latents.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).numpy(), arrays, atol=1e-6)
    assert torch.equal(pipe(condition_ids=[42, 58], generator=[torch.Generator().manual_seed(s) for s in (0, 1)],
                            num_inference_steps=3, output_type="latent", return_dict=False)[0], latents)

    def zero_last(pipe, i, t, callback_kwargs):  # PipelineTesterMixin.test_callback_inputs, as diffusers asks it
        if i == pipe.num_timesteps - 1:
            callback_kwargs["latents"] = torch.zeros_like(callback_kwargs["latents"])
        return callback_kwargs

    with pytest.raises(ValueError, match="output_type 'PIL'"):  # diffusers' names are lower case
        pipe(condition_ids=[42], num_inference_steps=3, output_type="PIL")
    output = pipe(condition_ids=[42], num_inference_steps=3, callback_on_step_end=zero_last,
                  callback_on_step_end_tensor_inputs=pipe._callback_tensor_inputs, output_type="latent")[0]
    assert output.abs().sum() == 0


@LOADERS
def test_lcm_student_says_how_many_steps_its_grid_holds(tmp_path, load):
    """A one-segment student (distill --num_segments 1 --num_ddim_timesteps 10) samples on its 10-point grid:
    asked for more, it says the range (LCMScheduler's own error spoke of original_steps x strength)."""
    student = load(saved(tmp_path / "lcm", consistency.lcm_scheduler(TEACHER.config, 10), distilled_guidance_scale=2.0))
    student.set_progress_bar_config(disable=True)
    assert type(student.scheduler).__name__ == "LCMScheduler" and student.max_inference_steps == 10
    images = student(condition_ids=[42], num_inference_steps=10, guidance_scale=1.0, output_type="pt").images
    assert images.shape == (1, 3, 32, 32)  # the whole grid
    for steps in (11, 0):
        with pytest.raises(ValueError, match=rf"^num_inference_steps must be 1-10 \(the sampler's distillation "
                                             rf"grid\), got {steps}$"):
            student(condition_ids=[42], num_inference_steps=steps, guidance_scale=1.0)
    teacher = load(saved(tmp_path / "teacher", dpm_solver()))
    assert teacher.max_inference_steps == 1000  # other samplers: every training timestep
    with pytest.raises(ValueError, match=r"^num_inference_steps must be 1-1000, got 0$"):
        teacher(condition_ids=[42], num_inference_steps=0)


@pytest.mark.e2e
def test_scripts_refuse_more_steps_than_the_grid_in_one_line(tmp_path):
    """sample_fairface.py asked for more steps than an LCM student's grid: one line, exit 2, no traceback (the
    pipeline's ValueError reached the user as a traceback)."""
    from conftest import run_script

    student = saved(tmp_path / "lcm", consistency.lcm_scheduler(TEACHER.config, 10), distilled_guidance_scale=2.0)
    result = run_script("sample_fairface.py", "--model", student, "--condition", "42", "--num_inference_steps", "11",
                        "--output_dir", tmp_path / "out", check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1].endswith(
        "error: --num_inference_steps must be 1-10 (the sampler's distillation grid), got 11")
