"""Faults where users run (issue 21): the quick start's own resume command, diffusers' callback convention,
strict JSON, fp16 grad scaling, shared file systems, `latest` and the process-group timeout across ranks, the
pixel cache built by every rank.

Runs are real subprocesses (tests/test_resume.py's helpers); a fault is planted through the test hook
``FAIRFACE_TEST_SAVE_FAULT`` (utils/files/faults.py) or a stand-in for the operating-system call that fails.
"""

import os
import shlex
import signal
import subprocess
import sys

import pytest

from conftest import REPO, start_script, torchrun
from test_resume import COMMON, data160, finish, resumed_from, saving, wait_for  # noqa: F401 (data160: fixture)

TINY_DEMO = ["--num_epochs", "1", "--max_train_steps", "4", "--checkpointing_steps", "2", "--report_to", "none",
             "--block_out_channels", "16", "32", "--cross_attention_dim", "16", "--num_inference_steps", "2"]


# ------------------------------------------------------------------------------------------------ quick start
@pytest.mark.e2e
def test_quick_start_resumes_with_the_command_it_prints(tmp_path):
    """A first `--demo` run (its data not generated yet) stopped by Ctrl-C prints how to resume; that exact
    command, from the same folder, resumes (it was refused: the record held the relative data path)."""
    command = [os.path.join(REPO, "train_fairface.py"), "--demo", *TINY_DEMO]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FAIRFACE_TEST_SAVE_FAULT": "2:pause"}
    process = start_script(command, tmp_path / "1.log", cwd=tmp_path, env=env)
    wait_for(saving(str(tmp_path / "fairface-demo"), 2), process, "checkpoint-2")
    os.killpg(process.pid, signal.SIGINT)
    code, output = finish(process)
    assert code == 0, output[-4000:]
    hint = "Resume with the same command plus "
    assert hint in output, output[-4000:]
    extra = shlex.split(output.split(hint, 1)[1].splitlines()[0])
    assert extra == ["--resume_from_checkpoint", "latest"]
    code, output = finish(start_script(command + extra, tmp_path / "2.log", cwd=tmp_path,
                                       env={**env, "FAIRFACE_TEST_SAVE_FAULT": ""}))
    assert code == 0, output[-4000:]
    assert resumed_from(output) == "resumed from fairface-demo/checkpoint-2 at step 2"
    assert "done: 4 steps" in output


# ------------------------------------------------------------------------------------------------ callbacks
@pytest.fixture(scope="module")
def tiny_pipeline_folder(tmp_path_factory):
    """An untrained tiny pipeline, saved as training saves one (with the shipped code)."""
    from conftest import save_tiny_pipeline

    return save_tiny_pipeline(tmp_path_factory.mktemp("callbacks") / "pipe")[1]


def _ours(folder):
    from utils.model.pipeline import load_pipeline
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

    from utils.hub import remote_code
    from utils.model.pipeline import ConditionEncoder, FairFacePipeline, build_unet, load_pipeline

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


@pytest.mark.e2e
def test_hub_uploads_a_release_whose_first_finish_was_interrupted(tiny_pipeline_folder, tmp_path):
    """A kill during the first release's finish leaves it complete in .release-new and nothing at the root:
    `python -m utils.hub` finishes it and uploads it (it refused: "no model_index.json")."""
    import json
    import shutil

    from test_hub import REPO_ID, fake_hub_env
    from utils.hub import release

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


def test_ema_loads_without_the_deprecated_from_config_path(tmp_path):
    """load_ema reads the EMA's state from its config dict: from_config(path) is deprecated (gone in diffusers
    1.0, which requirements.txt allows); the loaded EMA equals the saved one."""
    import warnings

    import torch

    from utils.run.ema import build_emas, load_ema
    from utils.model.pipeline import ConditionEncoder

    torch.manual_seed(0)
    model = ConditionEncoder(embed_dim=8)
    saved = build_emas({"encoder": model}, 0.999, 0.75)["encoder"]
    for _ in range(3):
        with torch.no_grad():
            model.embedding.weight.add_(torch.randn_like(model.embedding.weight))
        saved.step(model.parameters())
    saved.save_pretrained(str(tmp_path / "ema"))
    loaded = build_emas({"encoder": ConditionEncoder(embed_dim=8)}, 0.5, 0.5)["encoder"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        load_ema(loaded, str(tmp_path / "ema"))
    state, expected = loaded.state_dict(), saved.state_dict()
    assert {k: v for k, v in state.items() if k != "shadow_params"} == \
        {k: v for k, v in expected.items() if k != "shadow_params"}
    assert all(torch.equal(a, b) for a, b in zip(state["shadow_params"], expected["shadow_params"]))


# ------------------------------------------------------------------------------------------------ file systems
FAKE_FLOCK = '''
import errno, fcntl, os
def flock(fd, operation):  # a file system that cannot lock (NFS without lockd): every flock fails ENOLCK
    raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))
fcntl.flock = flock
'''


@pytest.mark.parametrize("code", ["ENOLCK", "ENOSYS", "EOPNOTSUPP"])
def test_a_file_system_that_cannot_lock_is_said_so(tmp_path, monkeypatch, code):
    """flock errors other than "would block" are no "in use by another run"; FAIRFACE_NO_FILE_LOCKS=1 goes on."""
    import errno
    import fcntl

    from utils.files import file_locks
    from utils.run import run_folder

    def flock(fd, operation):
        raise OSError(getattr(errno, code), os.strerror(getattr(errno, code)))

    monkeypatch.setattr(fcntl, "flock", flock)
    with pytest.raises(OSError) as caught:
        run_folder.lock(str(tmp_path))
    message = str(caught.value)
    assert "in use by another run" not in message
    assert os.strerror(getattr(errno, code)) in message and "does not support file locks" in message and "FAIRFACE_NO_FILE_LOCKS=1" in message
    monkeypatch.setenv(file_locks.NO_LOCKS_ENV, "1")
    run_folder.lock(str(tmp_path))  # goes on, at the user's risk
    run_folder._held.pop(os.path.join(str(tmp_path), run_folder.LOCK_FILE)).close()


@pytest.mark.e2e
def test_training_on_a_file_system_without_locks_is_one_line(tmp_path):
    """The whole script: exit 2, one line naming the cause and the way out (it was "in use by another run")."""
    (tmp_path / "fake").mkdir()
    (tmp_path / "fake" / "sitecustomize.py").write_text(FAKE_FLOCK)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        p for p in (str(tmp_path / "fake"), os.environ.get("PYTHONPATH")) if p)}
    result = subprocess.run([sys.executable, os.path.join(REPO, "train_fairface.py"), "--demo", *TINY_DEMO,
                             "--output_dir", str(tmp_path / "out")], cwd=tmp_path, capture_output=True, text=True,
                            timeout=300, env=env)
    assert result.returncode == 2, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert "ENOLCK" in last and "FAIRFACE_NO_FILE_LOCKS=1" in last and "Traceback" not in result.stderr


@pytest.mark.e2e
def test_without_fcntl_the_scripts_import_and_training_says_linux_and_macos(tmp_path):
    """Windows has no fcntl: the modules still import; a run stops with one line saying where it runs."""
    code = ("import sys, runpy; sys.modules['fcntl'] = None; sys.argv = sys.argv[1:]; "
            "import utils.hub.uploads, utils.data.pixel_cache, utils.run.run_folder, sample_fairface; "
            "runpy.run_path(sys.argv[0], run_name='__main__')")
    result = subprocess.run([sys.executable, "-c", code, os.path.join(REPO, "train_fairface.py"), "--demo",
                             *TINY_DEMO, "--output_dir", str(tmp_path / "out")], cwd=REPO, capture_output=True,
                            text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 2, result.stderr[-3000:]
    assert "run on Linux and macOS" in result.stderr.strip().splitlines()[-1] and "Traceback" not in result.stderr


def _release_of(seed):
    """A tiny pipeline whose weights depend on ``seed`` and a write(folder) that releases it."""
    import torch
    from diffusers import DDPMScheduler

    from utils.hub import remote_code
    from utils.model.pipeline import ConditionEncoder, FairFacePipeline, build_unet

    torch.manual_seed(seed)
    pipe = FairFacePipeline(unet=build_unet(32, (16, 32), 1, cross_attention_dim=16),
                            condition_encoder=ConditionEncoder(embed_dim=16), scheduler=DDPMScheduler())
    return pipe, lambda folder: remote_code.save_pipeline(pipe, folder)


def _same_weights(a, b):
    import torch

    return all(torch.equal(x, y) for x, y in zip([*a.unet.state_dict().values(), *a.condition_encoder.state_dict().values()],
                                                 [*b.unet.state_dict().values(), *b.condition_encoder.state_dict().values()]))


@pytest.mark.parametrize("race", ["whole release during the read", "finish during a read of .release-new"])
def test_a_reader_racing_a_release_gets_one_release(tmp_path, monkeypatch, race):
    """A release is published (or finished) between the reader's UNet and its condition encoder: the reader
    returns the new release whole; it returned the old UNet with the new encoder, or hit FileNotFoundError."""
    import threading

    from utils.model import pipeline
    from utils.hub import release

    root = str(tmp_path / "run")
    os.makedirs(root)
    old, write_old = _release_of(0)
    new, write_new = _release_of(1)
    release.publish(root, write_old)
    go = tmp_path / "go"
    # The writer stops before the commit, or (second case) after it, in the middle of moving into the root.
    monkeypatch.setenv("FAIRFACE_TEST_SAVE_FAULT", f"{'release' if race.startswith('whole') else 'release-moves'}"
                                                   f":wait:{go}")
    writer = threading.Thread(target=release.publish, args=(root, write_new))
    writer.start()
    stopped = ".tmp-release" if race.startswith("whole") else release.PENDING
    while not os.path.isfile(os.path.join(root, stopped, release.MANIFEST)):
        assert writer.is_alive()
        writer.join(0.02)
    real = pipeline.ConditionEncoder.from_pretrained.__func__
    calls = []

    def encoder_after_the_release(cls, *args, **kwargs):  # the UNet is read: now the release goes on, to its end
        if not calls:
            go.touch()
            writer.join(60)
        calls.append(1)
        return real(cls, *args, **kwargs)

    monkeypatch.setattr(pipeline.ConditionEncoder, "from_pretrained", classmethod(encoder_after_the_release))
    loaded = pipeline.load_pipeline(root)
    assert not writer.is_alive() and not os.path.exists(os.path.join(root, release.PENDING))
    assert _same_weights(loaded, new) and len(calls) == 2, "one retry, then the new release whole"


def test_release_finishes_beside_an_old_release_it_cannot_remove(tmp_path, monkeypatch):
    """NFS keeps a removed file that a reader has open as .nfsXXXX (unlink: EBUSY): an .old-release holding one
    must not stop this release nor later ones."""
    import errno

    from utils.hub import release
    from utils.model.pipeline import load_pipeline

    root = str(tmp_path / "run")
    os.makedirs(root)
    release.publish(root, _release_of(0)[1])
    os.makedirs(os.path.join(root, ".old-release"))
    open(os.path.join(root, ".old-release", ".nfs000000001"), "w").close()
    real_unlink = os.unlink

    def nfs_unlink(path, *args, **kwargs):
        if os.path.basename(str(path)).startswith(".nfs"):
            raise OSError(errno.EBUSY, os.strerror(errno.EBUSY), str(path))
        return real_unlink(path, *args, **kwargs)

    monkeypatch.setattr(os, "unlink", nfs_unlink)
    for seed in (1, 2):
        pipe, write = _release_of(seed)
        release.publish(root, write)
        assert _same_weights(load_pipeline(root), pipe)
    assert not os.path.exists(os.path.join(root, release.PENDING))


# ------------------------------------------------------------------------------------------------ resume settings

@pytest.mark.e2e
def test_resume_applies_new_optimizer_and_ema_settings_and_can_turn_ema_on(data160, tmp_path):
    """A run without EMA, resumed with --use_ema (--allow_resume_changes), a new --learning_rate, Adam settings and
    EMA settings: the EMA starts from the resumed weights, the new values are applied and logged (the EMA was a
    file error, the others silently kept the checkpoint's values)."""
    import json

    import torch

    from test_resume import run

    out = str(tmp_path / "run")
    base = ["--dataset_name", data160, "--output_dir", out, *[a for a in COMMON if a != "--use_ema"],
            "--train_batch_size", "16", "--checkpointing_steps", "2"]
    run([*base, "--max_train_steps", "2"], tmp_path / "1.log")
    new = ["--learning_rate", "5e-4", "--adam_beta2", "0.99", "--adam_epsilon", "1e-6", "--adam_weight_decay", "0",
           "--use_ema", "--allow_resume_changes", "--ema_decay", "0.99", "--ema_power", "0.5"]
    output = run([*base, "--max_train_steps", "4", *new, "--resume_from_checkpoint", "latest"], tmp_path / "2.log")
    assert "the EMA starts now from the resumed weights" in output
    line = next(line for line in output.splitlines() if "resuming with new settings" in line)
    for fragment in ("--learning_rate 0.001 -> --learning_rate 0.0005", "--adam_beta2 0.999 -> --adam_beta2 0.99",
                     "--adam_epsilon 1e-08 -> --adam_epsilon 1e-06", "--adam_weight_decay 0.01 -> --adam_weight_decay 0"):
        assert fragment in line, line
    groups = torch.load(f"{out}/checkpoint-4/optimizer.bin", weights_only=True)["param_groups"]
    assert all(g["initial_lr"] == 5e-4 and tuple(g["betas"]) == (0.9, 0.99) and g["eps"] == 1e-6
               and g["weight_decay"] == 0 for g in groups)
    with open(f"{out}/checkpoint-4/unet_ema/config.json") as f:
        ema = json.load(f)
    assert ema["decay"] == 0.99 and ema["power"] == 0.5 and ema["optimization_step"] == 2

    output = run([*base, "--max_train_steps", "6", *new, "--ema_decay", "0.95", "--ema_power", "0.75",
                  "--resume_from_checkpoint", "latest"], tmp_path / "3.log")
    line = next(line for line in output.splitlines() if "resuming with new settings" in line)
    assert "--ema_decay 0.99 -> --ema_decay 0.95; --ema_power 0.5 -> --ema_power 0.75" in line, line
    with open(f"{out}/checkpoint-6/unet_ema/config.json") as f:
        ema = json.load(f)
    assert ema["decay"] == 0.95 and ema["power"] == 0.75 and ema["optimization_step"] == 4


def test_bf16_checkpoint_resumed_with_fp16_grad_scaler_is_one_line(tmp_path, capsys):
    """fp16 on a GPU has a grad scaler whose state accelerate loads from scaler.pt, which a bf16 or float32
    checkpoint lacks: refused with one line (it was a file error from inside accelerate)."""
    from utils.run import checkpoints, resume_check

    checkpoint = tmp_path / "checkpoint-4"
    checkpoint.mkdir()
    (checkpoint / checkpoints.TRAINING_STATE).write_text('{"global_step": 4}')
    assert resume_check.check_or_exit(str(checkpoint), {}, False, grad_scaler=False) == []
    with pytest.raises(SystemExit) as exit_:
        resume_check.check_or_exit(str(checkpoint), {}, False, grad_scaler=True)
    assert exit_.value.code == 2
    assert "--mixed_precision fp16" in capsys.readouterr().err.strip().splitlines()[-1]


# ------------------------------------------------------------------------------------------------ several ranks
@pytest.mark.e2e
def test_the_default_ddp_timeout_fits_a_slow_rank_0(data160, tmp_path):
    """Two gloo processes; rank 0 alone assembles the pixel cache, slowly (12 s), while rank 1 waits in a
    barrier: with the default --ddp_timeout the run goes through (with --ddp_timeout 3 the same wait ends it, on
    every script: tests/test_promises.py)."""
    from test_resume import launch

    args = ["--dataset_name", data160, *COMMON[:COMMON.index("--max_train_steps")], "--max_train_steps", "2",
            "--train_batch_size", "8", "--checkpointing_steps", "100"]
    slow = {"FAIRFACE_TEST_SAVE_FAULT": "pixel-cache-parts:sleep:12"}
    code, output = finish(launch([*args, "--output_dir", tmp_path / "default", "--preprocess_cache", tmp_path / "c2"],
                                 tmp_path / "default.log", env=slow, nproc=2))
    assert code == 0 and "done: 2 steps" in output, output[-4000:]


def _two_gloo_ranks(script):
    """``script`` on two CPU processes (torchrun, gloo); requires exit 0, returns the CompletedProcess.

    The script ends by leaving the process group (utils.run.distributed.leave_process_group): a gloo group left to
    interpreter shutdown aborts now and then ("terminate called without an active exception", SIGABRT on rank 0;
    CI, stop 26)."""
    from conftest import free_port

    script.write_text(script.read_text() + "accelerator.wait_for_everyone()\n"
                      "from utils.run.distributed import leave_process_group\nleave_process_group()\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"}
    result = subprocess.run(torchrun(["--nproc_per_node", "2", "--master_port", free_port()], script, env=env),
                            capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.mark.e2e
def test_main_process_value_is_rank_0s_on_every_rank(tmp_path):
    """What `latest` resolves to is decided on rank 0 and broadcast (utils.run.distributed.main_process_value)."""
    script = tmp_path / "decide.py"
    script.write_text(f"import sys; sys.path.insert(0, {REPO!r})\n"
                      "from accelerate import Accelerator\nfrom utils.run import distributed\n"
                      "accelerator = Accelerator()\n"
                      "seen = distributed.main_process_value(accelerator, f'checkpoint-seen-by-{accelerator.process_index}')\n"
                      "print(f'rank {accelerator.process_index}: {seen}', flush=True)\n")
    result = _two_gloo_ranks(script)
    assert "rank 0: checkpoint-seen-by-0" in result.stdout and "rank 1: checkpoint-seen-by-0" in result.stdout


@pytest.mark.e2e
def test_ranks_that_see_different_latest_resume_from_rank_0s(data160, tmp_path):
    """A requeued 2-process run on NFS: rank 1's stale directory cache lacks checkpoint-4 (the test hook
    FAIRFACE_TEST_STALE_LISTING=1 hides the newest checkpoint from rank 1's listing), so rank 1 alone resolves
    `latest` to checkpoint-2. Both ranks resume from rank 0's checkpoint-4 and end bitwise like a straight run
    (with each rank deciding, rank 1 loaded checkpoint-2: its replica and its step count drifted from rank 0's)."""
    import shutil

    from test_resume import assert_same_run, run

    args = [*COMMON[:COMMON.index("--max_train_steps")], "--max_train_steps", "6", "--train_batch_size", "8",
            "--checkpointing_steps", "2", "--ddp_timeout", "120"]  # a rank left behind fails, not hangs for 2 h
    reference, out = tmp_path / "reference", tmp_path / "run"
    run(["--dataset_name", data160, "--output_dir", reference, *args], tmp_path / "reference.log", nproc=2)
    for step in (2, 4):  # the folder as the requeued job finds it: killed while writing checkpoint-6
        shutil.copytree(reference / f"checkpoint-{step}", out / f"checkpoint-{step}")
    output = run(["--dataset_name", data160, "--output_dir", out, *args, "--resume_from_checkpoint", "latest"],
                 tmp_path / "resumed.log", env={"FAIRFACE_TEST_STALE_LISTING": "1"}, nproc=2)
    assert "test hook: rank 1 does not see checkpoint-4" in output, "the hook must reach rank 1's listing"
    assert resumed_from(output) == f"resumed from {out}/checkpoint-4 at step 4"
    assert_same_run(str(reference), str(out), step=6)  # rank 1's gradients are in every step's all-reduce


def test_pixel_cache_in_parts_is_byte_for_byte_the_one_process_build(tmp_path):
    """Parts of uneven size, encoded in any order (as processes finish) and assembled, give the files of a
    one-process build, byte for byte, over records that decode, are skipped or come in unusual modes."""
    from utils.data import fairface, pixel_cache
    from utils.data.demo_data import make_demo_dataset

    dataset = fairface.load_fairface(make_demo_dataset(str(tmp_path / "odd"), num_images=40, resolution=32,
                                                   broken_images=True))
    one = pixel_cache.build_pixel_cache(dataset, str(tmp_path / "one"), 24, progress=False)["folder"]
    for parts in (2, 4):  # 54 records: 27 + 27, 13 + 14 + 13 + 14
        folder = pixel_cache.pixel_cache_folder(dataset, str(tmp_path / f"{parts}-parts"), 24)
        with pixel_cache.pixel_cache_build(folder) as tmp:
            for part in reversed(range(parts)):
                pixel_cache.encode_part(dataset, tmp, 24, part, parts, progress=False)
            pixel_cache.assemble_parts(tmp, parts, 24)
        assert sorted(os.listdir(folder)) == sorted(os.listdir(one)) == ["meta.json", "pixels.npy", "valid.npy"]
        for name in os.listdir(one):
            with open(os.path.join(one, name), "rb") as a, open(os.path.join(folder, name), "rb") as b:
                assert a.read() == b.read(), f"{parts} parts: {name} differs"
        assert os.listdir(os.path.dirname(folder)) == [os.path.basename(folder)], "temporaries left"


def assert_one_process_build(cache_root, dataset_name, work):
    """``cache_root`` holds exactly the cache of ``dataset_name`` at 32 px, byte for byte the one-process build."""
    from utils.data import fairface, pixel_cache

    one = pixel_cache.build_pixel_cache(fairface.load_fairface(dataset_name), str(work), 32, progress=False)["folder"]
    assert os.listdir(cache_root) == [os.path.basename(one)], os.listdir(cache_root)
    for name in os.listdir(one):
        with open(os.path.join(one, name), "rb") as f:
            assert (cache_root / os.path.basename(one) / name).read_bytes() == f.read(), name


@pytest.mark.e2e
def test_two_ranks_build_the_pixel_cache_together(data160, tmp_path):
    """torchrun, 2 gloo processes: each decodes half of the images into part files of its own, rank 0 assembles
    them. Rank 0 SIGKILLed with both parts written and nothing assembled leaves no cache that loads, only a
    temporary folder; the next run removes it and builds the cache byte for byte as one process does. (Training
    from it: test_multinode.py's reference builds its cache on two processes of one node, the two-node runs on one
    process each, and their weights are bitwise equal.)"""
    from test_resume import launch, run

    args = ["--dataset_name", data160, *COMMON[:COMMON.index("--max_train_steps")], "--max_train_steps", "2",
            "--train_batch_size", "8", "--checkpointing_steps", "100"]
    cache = tmp_path / "cache"
    code, output = finish(launch([*args, "--output_dir", tmp_path / "killed", "--preprocess_cache", cache],
                                 tmp_path / "killed.log", env={"FAIRFACE_TEST_SAVE_FAULT": "pixel-cache-parts:kill"},
                                 nproc=2))
    assert code != 0, output[-3000:]
    (left,) = [name for name in os.listdir(cache) if (cache / name).is_dir()]
    assert ".tmp-" in left and sorted(os.listdir(cache / left)) == [
        f"part-{part}-of-2-{kind}.npy" for part in (0, 1) for kind in ("pixels", "valid")], os.listdir(cache / left)

    run([*args, "--output_dir", tmp_path / "run", "--preprocess_cache", cache], tmp_path / "run.log", nproc=2)
    assert_one_process_build(cache, data160, tmp_path / "one")


NODE_CACHE_SCRIPT = """
import sys
from accelerate import Accelerator
from train_fairface import parse_args
from utils.run import run_setup
from utils.run.distributed import leave_process_group

accelerator = Accelerator()
args = parse_args(["--dataset_name", sys.argv[1], "--resolution", "32", "--preprocess_cache", sys.argv[2]])
_, images = run_setup.load_training_data(args, accelerator)
print(f"rank {accelerator.process_index}: {int(images.cache['valid'].sum())} cached", flush=True)
accelerator.wait_for_everyone()
leave_process_group()
"""


@pytest.mark.e2e
def test_two_machines_of_two_processes_on_their_own_disks_each_build_the_cache(data160, tmp_path):
    """Two torchrun "machines" of two processes each, each with a --preprocess_cache the other does not see
    (node-local disks): each machine's processes build its own copy, byte for byte the one-process build."""
    from conftest import free_port

    script = tmp_path / "cache.py"
    script.write_text(NODE_CACHE_SCRIPT)
    port, nodes = free_port(), []
    try:
        for node in (0, 1):
            env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true", "PYTHONPATH": REPO}
            command = torchrun(["--nnodes", "2", "--nproc_per_node", "2", "--node_rank", node, "--master_addr",
                                "127.0.0.1", "--master_port", port], script, data160, tmp_path / f"cache{node}", env=env)
            with open(tmp_path / f"node{node}.log", "w") as log:
                nodes.append(subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                              start_new_session=True, env=env))
        codes = [node.wait(timeout=300) for node in nodes]
    finally:
        for node in nodes:
            if node.poll() is None:
                os.killpg(node.pid, signal.SIGKILL)
                node.wait()
    output = "".join((tmp_path / f"node{node}.log").read_text() for node in (0, 1))
    assert codes == [0, 0], output[-6000:]
    assert all(f"rank {rank}: 160 cached" in output for rank in range(4)), output[-6000:]
    for node in (0, 1):
        assert_one_process_build(tmp_path / f"cache{node}", data160, tmp_path / "one")


# ------------------------------------------------------------------------------------------------ fp16
def _fp16_run(data, out, log, *extra, scale="1024"):
    from test_resume import launch

    args = ["--dataset_name", data, "--output_dir", out, *COMMON[:COMMON.index("--max_train_steps")],
            "--max_train_steps", "6", "--train_batch_size", "8", "--gradient_accumulation_steps", "2",
            "--checkpointing_steps", "100", "--mixed_precision", "fp16", "--logging_steps", "1", *extra]
    return finish(launch(args, log, env={"FAIRFACE_TEST_CPU_GRAD_SCALER": scale}))


@pytest.mark.e2e
def test_fp16_grad_scaler_survives_a_nonfinite_step(data160, tmp_path):
    """fp16 with a grad scaler (a CPU torch.amp.GradScaler through the test hook), accumulation 2, step 3's loss
    planted NaN: the step is skipped, the scaler updates, training goes on to the end (it raised "unscale_() has
    already been called" at the next step)."""
    code, output = _fp16_run(data160, tmp_path / "run", tmp_path / "run.log", "--inject_nonfinite_steps", "3")
    assert code == 0, output[-4000:]
    assert "step 3: non-finite loss/gradient, update skipped (1 in a row)" in output
    assert "done: 6 steps" in output and "unscale_" not in output


@pytest.mark.e2e
def test_fp16_overflows_count_towards_max_nonfinite_steps(data160, tmp_path):
    """Steps the grad scaler skips (here: every step overflows at a scale of 2**100) are non-finite steps: the run
    stops after --max_nonfinite_steps of them with its checkpoint (they counted as finite: it never stopped)."""
    code, output = _fp16_run(data160, tmp_path / "run", tmp_path / "run.log", "--max_nonfinite_steps", "3",
                             scale=str(2.0 ** 100))
    assert code == 2, output[-4000:]
    assert "3 non-finite steps in a row; stopped" in output.strip().splitlines()[-1]


@pytest.mark.e2e
def test_finiteness_is_agreed_by_every_rank(tmp_path):
    """A loss non-finite on rank 1 only is non-finite on both ranks (all-reduced), so the ranks' streaks never
    drift apart into a lone checkpoint-and-stop (before, each rank judged fp16 steps by its own loss)."""
    script = tmp_path / "agree.py"
    script.write_text(f"import sys; sys.path.insert(0, {REPO!r})\n"
                      "import torch\nfrom accelerate import Accelerator\nfrom utils.run import nonfinite\n"
                      "accelerator = Accelerator()\n"
                      "rank = accelerator.process_index\n"
                      "mine = torch.tensor(float('nan') if rank == 1 else 0.5)\n"
                      "print(f'rank {rank}: bad {nonfinite.agreed_finite(accelerator, mine)} '\n"
                      "      f'good {nonfinite.agreed_finite(accelerator, torch.tensor(0.5), 1.0)}', flush=True)\n")
    result = _two_gloo_ranks(script)
    assert "rank 0: bad False good True" in result.stdout and "rank 1: bad False good True" in result.stdout


def test_step_loss_is_the_mean_of_its_micro_batches():
    import torch

    from utils.run.nonfinite import MicroBatchLoss

    step_loss = MicroBatchLoss()
    for value in (1.0, 2.0, 6.0):
        step_loss.add(torch.tensor(value, requires_grad=True))
    assert step_loss.take().item() == 3.0
    step_loss.add(torch.tensor(5.0))
    assert step_loss.take().item() == 5.0
