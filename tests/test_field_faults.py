"""Faults where users run (issue 21): the quick start's own resume command, diffusers' callback convention,
strict JSON, fp16 grad scaling, shared file systems, `latest` and the process-group timeout across ranks.

Runs are real subprocesses (tests/test_resume.py's helpers); a fault is planted through the test hook
``FAIRFACE_TEST_SAVE_FAULT`` (utils/faults.py) or a stand-in for the operating-system call that fails.
"""

import os
import shlex
import signal
import subprocess
import sys

import pytest

from conftest import REPO
from test_resume import finish, output_of, resumed_from, saving, wait_for

TINY_DEMO = ["--num_epochs", "1", "--max_train_steps", "4", "--checkpointing_steps", "2", "--report_to", "none",
             "--block_out_channels", "16", "32", "--cross_attention_dim", "16", "--num_inference_steps", "2"]


# ------------------------------------------------------------------------------------------------ quick start
def test_quick_start_resumes_with_the_command_it_prints(tmp_path):
    """A first `--demo` run (its data not generated yet) stopped by Ctrl-C prints how to resume; that exact
    command, from the same folder, resumes (it was refused: the record held the relative data path)."""
    command = [sys.executable, os.path.join(REPO, "train_fairface.py"), "--demo", *TINY_DEMO]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FAIRFACE_TEST_SAVE_FAULT": "2:pause"}
    log = tmp_path / "1.log"
    with open(log, "w") as out:
        process = subprocess.Popen(command, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT, env=env,
                                   start_new_session=True)
    process.log_path = log
    wait_for(saving(str(tmp_path / "fairface-demo"), 2), process, "checkpoint-2")
    os.killpg(process.pid, signal.SIGINT)
    code, output = finish(process)
    assert code == 0, output[-4000:]
    hint = "Resume with the same command plus "
    assert hint in output, output[-4000:]
    extra = shlex.split(output.split(hint, 1)[1].splitlines()[0])
    assert extra == ["--resume_from_checkpoint", "latest"]
    resumed = subprocess.run(command + extra, cwd=tmp_path, capture_output=True, text=True, timeout=600,
                             env={**env, "FAIRFACE_TEST_SAVE_FAULT": ""})
    output = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, output[-4000:]
    assert resumed_from(output) == f"resumed from fairface-demo/checkpoint-2 at step 2"
    assert "done: 4 steps" in output


# ------------------------------------------------------------------------------------------------ callbacks
@pytest.fixture(scope="module")
def tiny_pipeline_folder(tmp_path_factory):
    """An untrained tiny pipeline, saved as training saves one (with the shipped code)."""
    from diffusers import DDPMScheduler

    from utils import remote_code
    from utils.pipeline import ConditionEncoder, FairFacePipeline, build_unet

    import torch
    torch.manual_seed(0)
    pipe = FairFacePipeline(unet=build_unet(32, (16, 32), 1, cross_attention_dim=16),
                            condition_encoder=ConditionEncoder(16),
                            scheduler=DDPMScheduler(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction"),
                            sampling_defaults=dict(num_inference_steps=3, guidance_scale=2.0, guidance_interval=None))
    folder = str(tmp_path_factory.mktemp("callbacks") / "pipe")
    remote_code.save_pipeline(pipe.set_scheduler("dpm++"), folder)
    return folder


def _ours(folder):
    from utils.pipeline import load_pipeline
    return load_pipeline(folder)


def _shipped(folder):
    from diffusers import DiffusionPipeline
    return DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)


@pytest.mark.parametrize("load", [_ours, _shipped], ids=["ours", "shipped"])
def test_diffusers_callback_convention(tiny_pipeline_folder, load):
    """diffusers' test_callback_cfg and test_callback_inputs, and a CFG cut-off as diffusers' SDCFGCutoffCallback
    does it (``pipe._guidance_scale = 0.0``): the guidance change made by the callback is honoured."""
    import torch

    pipe = load(tiny_pipeline_folder)
    pipe.set_progress_bar_config(disable=True)
    assert pipe._callback_tensor_inputs == ["latents"]

    def increase_guidance(pipe, i, t, callback_kwargs):  # test_callback_cfg
        pipe._guidance_scale += 1.0
        return callback_kwargs

    pipe(condition_ids=[42], guidance_scale=2.0, num_inference_steps=4, callback_on_step_end=increase_guidance,
         callback_on_step_end_tensor_inputs=pipe._callback_tensor_inputs, output_type="pt")
    assert pipe.num_timesteps == 4 and pipe.guidance_scale == 2.0 + pipe.num_timesteps

    def zero_last(pipe, i, t, callback_kwargs):  # test_callback_inputs
        assert set(pipe._callback_tensor_inputs) <= set(callback_kwargs)
        if i == pipe.num_timesteps - 1:
            callback_kwargs["latents"] = torch.zeros_like(callback_kwargs["latents"])
        return callback_kwargs

    output = pipe(condition_ids=[42], num_inference_steps=3, callback_on_step_end=zero_last, output_type="pt")
    assert output.images.abs().sum() == 0

    batches, seen = [], []
    pipe.unet.register_forward_pre_hook(lambda module, args: batches.append(args[0].shape[0]))

    def cut_off_guidance(pipe, i, t, callback_kwargs):
        seen.append(pipe.do_classifier_free_guidance)
        if i == 1:
            pipe._guidance_scale = 0.0
        return callback_kwargs

    pipe(condition_ids=[42], guidance_scale=3.0, num_inference_steps=5, callback_on_step_end=cut_off_guidance)
    assert batches == [2, 2, 1, 1, 1], "guidance switched off by the callback after step 1"
    assert seen == [True, True, False, False, False]


# ------------------------------------------------------------------------------------------------ smaller ones
def test_guidance_interval_to_inf_is_saved_as_strict_json(tmp_path):
    """`--guidance_interval 0 inf` (every step) is saved as the last training timestep, not as Infinity."""
    import json

    import torch
    from diffusers import DDPMScheduler

    from utils import remote_code
    from utils.cli import GuidanceInterval  # noqa: F401  (the flag's parser gives (0.0, inf))
    from utils.pipeline import ConditionEncoder, FairFacePipeline, build_unet, load_pipeline

    torch.manual_seed(0)
    defaults = dict(num_inference_steps=3, guidance_scale=2.0, guidance_interval=(0.0, float("inf")))
    pipe = FairFacePipeline(unet=build_unet(32, (16, 32), 1, cross_attention_dim=16),
                            condition_encoder=ConditionEncoder(16), scheduler=DDPMScheduler(),
                            sampling_defaults=defaults)
    remote_code.save_pipeline(pipe, str(tmp_path / "pipe"))

    def refuse(constant):
        raise ValueError(f"not strict JSON: {constant}")

    with open(tmp_path / "pipe" / "model_index.json") as f:
        index = json.load(f, parse_constant=refuse)
    assert index["sampling_defaults"]["guidance_interval"] == [0.0, 999.0]
    assert load_pipeline(str(tmp_path / "pipe")).sampling_settings()["guidance_interval"] == (0.0, 999.0)


def test_hub_uploads_a_release_whose_first_finish_was_interrupted(tiny_pipeline_folder, tmp_path):
    """A kill during the first release's finish leaves it complete in .release-new and nothing at the root:
    `python -m utils.hub` finishes it and uploads it (it refused: "no model_index.json")."""
    import json
    import shutil

    from test_hub import REPO_ID, fake_hub_env
    from utils import release

    out = tmp_path / "run"
    pending = out / release.PENDING
    shutil.copytree(tiny_pipeline_folder, pending)
    with open(pending / release.MANIFEST, "w") as f:
        json.dump(sorted(os.listdir(pending)), f)
    result = subprocess.run([sys.executable, "-m", "utils.hub", str(out), "--hub_model_id", REPO_ID], cwd=REPO,
                            capture_output=True, text=True, timeout=300,
                            env={**os.environ, **fake_hub_env(tmp_path / "record")})
    assert result.returncode == 0, result.stderr[-3000:]
    assert not pending.exists() and (out / "model_index.json").is_file()
    assert (tmp_path / "record" / REPO_ID / "model_index.json").is_file()
    assert (tmp_path / "record" / REPO_ID / "unet" / "diffusion_pytorch_model.safetensors").is_file()
