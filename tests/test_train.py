"""train_fairface.py end to end, as a user runs it, on generated FairFace-layout data (issue 3)."""

import json
import os
import subprocess

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO, TINY_MODEL_ARGS, free_port, parse_error, run_script, torchrun
from utils.data import fairface
from utils.labels import RACES, decode_condition
from utils.model.pipeline import generate, load_pipeline

SAMPLE_CONDITIONS = [42, 73, 120]  # train_fairface.SAMPLE_CONDITIONS, seeds 0, 1, 2


def test_merged_dataset_is_the_sum_of_configs_and_splits(demo_dataset):
    import datasets

    parts = [datasets.load_dataset(demo_dataset, config, split=split)
             for config in ("0.25", "1.25") for split in ("train", "validation")]
    assert all(len(part) > 0 for part in parts)
    merged = fairface.load_fairface(demo_dataset)
    assert len(merged) == sum(len(part) for part in parts) == 504
    assert merged.features["image"].decode is False  # decoding is ours, guarded


@pytest.mark.e2e
def test_run_writes_snapshots_samples_and_final_pipeline(tiny_run):
    names = set(os.listdir(tiny_run))
    assert {"epoch_1", "epoch_2", "epoch_3", "model_index.json", "unet", "condition_encoder", "scheduler"} <= names
    for epoch in (1, 2, 3):
        for i in range(3):
            with Image.open(os.path.join(tiny_run, f"sample_epoch_{epoch}_{i}.png")) as image:
                assert image.size == (32, 32) and image.mode == "RGB"
        assert os.path.isfile(os.path.join(tiny_run, f"epoch_{epoch}", "model_index.json"))
    weights = [f for root, _, files in os.walk(tiny_run) for f in files if f.endswith((".bin", ".pt", ".pth", ".ckpt"))
               and "checkpoint-" not in root]
    assert weights == [], "pickled weights outside accelerate's own checkpoint-* state"
    assert not [n for n in names if n.startswith(".tmp")]


@pytest.mark.e2e
def test_snapshot_reloads_and_reproduces_its_samples(tiny_run):
    """The condition encoder was saved with the UNet: the reloaded snapshot redraws the training-time samples."""
    pipe = load_pipeline(os.path.join(tiny_run, "epoch_3"))
    images = generate(pipe, [decode_condition(c) for c in SAMPLE_CONDITIONS], [0, 1, 2])  # the saved sampler settings
    for i, image in enumerate(images):
        saved = np.asarray(Image.open(os.path.join(tiny_run, f"sample_epoch_3_{i}.png")), dtype=np.int16)
        assert np.abs(np.asarray(image, dtype=np.int16) - saved).max() <= 1
    # ... and the condition matters: same seed, another condition, another image.
    other = generate(pipe, [decode_condition(0)], [0], num_inference_steps=25, guidance_scale=2.0)[0]
    assert np.abs(np.asarray(other, dtype=np.int16) - np.asarray(images[0], dtype=np.int16)).mean() > 2


@pytest.mark.e2e
def test_final_pipeline_is_the_ema_release(tiny_run):
    from safetensors.torch import load_file

    release = load_file(os.path.join(tiny_run, "unet", "diffusion_pytorch_model.safetensors"))
    snapshot = load_file(os.path.join(tiny_run, "epoch_3", "unet", "diffusion_pytorch_model.safetensors"))
    assert all(torch.equal(release[k], snapshot[k]) for k in release)
    with open(os.path.join(tiny_run, "condition_encoder", "config.json")) as f:
        assert json.load(f)["races"] == list(RACES)  # label names travel with the model


@pytest.mark.e2e
def test_mislabelled_dataset_is_refused(tmp_path):
    from utils.data.demo_data import make_demo_dataset

    swapped = list(RACES)
    swapped[0], swapped[1] = swapped[1], swapped[0]
    folder = make_demo_dataset(str(tmp_path / "bad"), num_images=64, resolution=32, label_names={"race": swapped})
    result = run_script("train_fairface.py", "--dataset_name", folder, "--output_dir", tmp_path / "out",
                        *TINY_MODEL_ARGS, "--max_train_steps", "2", check=False)
    assert result.returncode == 2
    assert "mislabelled" in result.stderr and "Traceback" not in result.stderr
    assert not os.path.exists(tmp_path / "out" / "unet")


@pytest.mark.e2e
def test_missing_dataset_is_a_one_line_error(tmp_path):
    result = run_script("train_fairface.py", "--dataset_name", tmp_path / "nowhere", "--output_dir", tmp_path / "out",
                        *TINY_MODEL_ARGS, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("train_fairface.py: error: cannot load dataset")


@pytest.mark.e2e
def test_demo_flag_generates_data_and_trains(tmp_path):
    """`--demo` goes through the same load_dataset code, with data generated on first use."""
    result = run_script("train_fairface.py", "--demo", "--dataset_name", tmp_path / "demo-data", "--output_dir",
                        tmp_path / "demo-run", "--preprocess_cache", tmp_path / "cache", "--max_train_steps", "3",
                        "--report_to", "none")
    assert os.path.isfile(tmp_path / "demo-data" / "README.md")
    assert os.path.isfile(tmp_path / "demo-run" / "model_index.json")
    assert os.listdir(tmp_path / "cache"), "the demo uses the pixel cache"
    assert "done: 3 steps" in result.stdout + result.stderr
    # --demo's own defaults (README): no EMA, no framing condition; the release says so
    assert not any(name.endswith("_ema") for name in os.listdir(tmp_path / "demo-run" / "checkpoint-3"))
    with open(tmp_path / "demo-run" / "condition_encoder" / "config.json") as f:
        assert not json.load(f).get("framings")


def test_full_data_defaults_are_ema_and_framing():
    """Without --demo: EMA (0.9999, warm-up power 3/4) and the framing condition are on (README's defaults)."""
    from train_fairface import parse_args

    full, demo = parse_args([]), parse_args(["--demo"])
    assert (full.use_ema, full.ema_decay, full.ema_power, full.framing_condition) == (True, 0.9999, 0.75, True)
    assert (demo.use_ema, demo.framing_condition) == (False, False)
    assert parse_args(["--demo", "--use_ema", "--framing_condition"]).use_ema  # flags given still win


@pytest.mark.e2e
def test_two_process_cpu_run_writes_one_set_of_outputs(demo_dataset, tmp_path):
    output_dir = tmp_path / "ddp"
    env = {**os.environ, "ACCELERATE_USE_CPU": "true"}
    command = torchrun(["--nproc_per_node", "2", "--master_port", free_port()], os.path.join(REPO, "train_fairface.py"),
                       "--dataset_name", demo_dataset, "--output_dir", output_dir, *TINY_MODEL_ARGS,
                       "--train_batch_size", "8", "--num_epochs", "1", "--max_train_steps", "6",
                       "--checkpointing_steps", "3", "--save_model_epochs", "1", env=env)
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "2 process(es)" in result.stderr
    assert sorted(n for n in os.listdir(output_dir) if n.startswith(("checkpoint-", "epoch_"))) == \
        ["checkpoint-3", "checkpoint-6", "epoch_1"]
    assert len([n for n in os.listdir(output_dir) if n.startswith("sample_epoch_")]) == 3
    assert os.path.isfile(output_dir / "checkpoint-6" / "random_states_1.pkl")  # each rank's RNG state
    pipe = load_pipeline(str(output_dir))
    assert pipe.unet.config.sample_size == 32


@pytest.mark.parametrize("bad_args,message", [
    (["--resolution", "31"], "divisible"), (["--cond_drop_prob", "1.5"], "between 0 and 1"),
    (["--attention_levels", "5"], "--attention_levels"), (["--train_batch_size", "0"], "positive"),
    (["--hub_push_snapshots"], "needs --push_to_hub"),
])
def test_bad_arguments_exit_2(bad_args, message, tmp_path):
    code, stderr = parse_error("train_fairface.py", "--output_dir", tmp_path, *TINY_MODEL_ARGS, *bad_args)
    assert code == 2 and message in stderr.strip().splitlines()[-1] and "Traceback" not in stderr


@pytest.mark.e2e
def test_push_without_login_fails_before_training(demo_dataset, tmp_path):
    result = run_script("train_fairface.py", "--dataset_name", demo_dataset, "--output_dir", tmp_path / "out",
                        *TINY_MODEL_ARGS, "--push_to_hub", "--hub_model_id", "someone/x", "--max_train_steps", "2",
                        check=False, env={"HF_TOKEN": "", "HF_HOME": str(tmp_path / "no-login")})
    assert result.returncode == 2 and "not logged in" in result.stderr and "Traceback" not in result.stderr
    assert not any(name.startswith("checkpoint-") for name in os.listdir(tmp_path / "out"))
