"""sample_fairface.py (issue 4): conditions by id or attribute, file names, one-line errors, seeds, samplers.

Few images and few steps: the tiny run's images are noise anyway; what matters is that the right files appear
and that a seed draws the same image whatever the batch.
"""

import os

import numpy as np
import pytest
from PIL import Image

import sample_fairface
from conftest import parse_error, run_script
from utils import grid
from utils.labels import decode_condition
from utils.model.pipeline import SCHEDULERS, generate, load_pipeline

FAST = ["--num_inference_steps", "3"]


def sample(tiny_run, output_dir, *args):
    """sample_fairface in-process (saves a Python start per call); returns the written paths."""
    return sample_fairface.main(sample_fairface.parse_args(
        ["--model", tiny_run, "--output_dir", str(output_dir), *FAST, *map(str, args)]))


def expected_name(condition_id, seed):
    return {42: "cond042_20-29_male_east-asian", 125: "cond125_70plus_female_southeast-asian"}[condition_id] + \
        f"_seed{seed:04d}.png"


def pixels(path):
    with Image.open(path) as image:
        assert image.size == (32, 32) and image.mode == "RGB"
        return np.asarray(image)


@pytest.mark.e2e
def test_sample_by_id_with_grid_as_a_user(tiny_run, tmp_path):
    result = run_script("sample_fairface.py", "--model", tiny_run, "--condition", "42", "125", "--num_images", "2",
                        "--grid", "--output_dir", tmp_path, *FAST)
    expected = {expected_name(c, s) for c in (42, 125) for s in (0, 1)}
    assert set(os.listdir(tmp_path)) == expected | {"grid.png"}
    for name in expected:
        pixels(tmp_path / name)
    assert str(tmp_path) in result.stdout
    # grid.png: 2 conditions x 2 seeds of enlarged tiles, plus the row-label and header margins.
    tile = grid.tile_size(32)
    with Image.open(tmp_path / "grid.png") as image:
        left, top = image.width - 2 * tile, image.height - 2 * tile
        assert left > 0 and top > 0
        corner = np.asarray(image.convert("RGB"))[top + tile:, left + tile:]
    last = Image.open(tmp_path / expected_name(125, 1)).resize((tile, tile), Image.NEAREST)
    assert np.array_equal(corner, np.asarray(last))  # condition 125, seed 1: the bottom-right tile


@pytest.mark.e2e
@pytest.mark.parametrize("flags, name", [
    (["--age", "20-29", "--gender", "male", "--race", "East Asian"], "20-29_male_east-asian_seed0003.png"),
    (["--gender", "F", "--race", "black"], "anyage_female_black_seed0003.png"),
    (["--age", "70+"], "70plus_anygender_anyrace_seed0003.png"),
])
def test_sample_by_attributes_names_files_by_slug(tiny_run, tmp_path, flags, name):
    paths = sample(tiny_run, tmp_path, *flags, "--seeds", "3")
    assert [os.path.basename(p) for p in paths] == [name] and os.listdir(tmp_path) == [name]
    pixels(paths[0])


@pytest.mark.parametrize("flags, expected", [
    (["--condition", "126"], "valid: ids 0-125"),
    (["--condition", "all", "7x"], "valid: ids 0-125"),
    (["--race", "martian"], "'East Asian', 'Indian', 'Black'"),
    (["--age", "20-29", "--gender", "robot"], "'Male', 'Female'"),
    (["--condition", "3", "--gender", "female"], "not both"),
    ([], "--condition ID"),
])
def test_bad_conditions_exit_2_with_one_line(flags, expected):
    code, err = parse_error("sample_fairface.py", *flags)  # refused while parsing, before any model is loaded
    assert code == 2
    assert err.count("\n") == 1 and "error:" in err and expected in err, err


@pytest.mark.e2e
def test_missing_model_says_how_to_get_one(tmp_path):
    result = run_script("sample_fairface.py", "--condition", "42", "--model", tmp_path / "no-model", check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1
    assert "accelerate launch train_fairface.py" in result.stderr
    assert "--model <local dir or user/repo>" in result.stderr


def test_default_model_and_non_pipeline_folder_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no fairface-diffusion-128/ here: `--condition 42` alone must explain itself
    with pytest.raises(SystemExit) as exit_info:
        sample_fairface.main(sample_fairface.parse_args(["--condition", "42"]))
    assert exit_info.value.code == 2 and "train_fairface.py" in capsys.readouterr().err
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "diffusion_pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(SystemExit) as exit_info:
        sample_fairface.main(sample_fairface.parse_args(["--condition", "42", "--model", "weights"]))
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "pickled" in err and err.count("\n") == 1


@pytest.mark.e2e
def test_same_seed_same_image_whatever_the_batch(tiny_run, tmp_path):
    name = expected_name(42, 1)
    # Whatever else is in the batch (another condition, another seed): bit-for-bit the same image.
    sample(tiny_run, tmp_path / "with7", "--condition", "42", "7", "--seeds", "1", "--batch_size", "2")
    sample(tiny_run, tmp_path / "with_seed5", "--condition", "42", "--seeds", "1,5", "--batch_size", "2")
    reference = pixels(tmp_path / "with7" / name)
    assert np.array_equal(reference, pixels(tmp_path / "with_seed5" / name))
    # Whatever the batch size: the same noise, but CPU kernels round differently per batch shape (~1e-6 in the
    # UNet output), which the untrained tiny model can stretch to one 8-bit level on a few pixels.
    sample(tiny_run, tmp_path / "b4", "--condition", "0", "42", "--seeds", "1,2", "--batch_size", "4")
    sample(tiny_run, tmp_path / "b1", "--condition", "0", "42", "--seeds", "1,2", "--batch_size", "1")
    assert sorted(os.listdir(tmp_path / "b4")) == sorted(os.listdir(tmp_path / "b1"))
    for other in os.listdir(tmp_path / "b4"):
        difference = np.abs(pixels(tmp_path / "b4" / other).astype(int) - pixels(tmp_path / "b1" / other))
        assert difference.max() <= 1 and difference.mean() < 0.01, other
    assert np.abs(reference.astype(int) - pixels(tmp_path / "b1" / name)).max() <= 1
    # ... while another seed is another image.
    assert np.abs(reference.astype(int) - pixels(tmp_path / "b4" / expected_name(42, 2))).mean() > 10


@pytest.mark.e2e
@pytest.mark.parametrize("guidance_scale, unet_batch", [(1.0, 2), (3.0, 4)])
def test_one_unet_call_per_step_with_or_without_guidance(tiny_run, guidance_scale, unet_batch):
    pipe = load_pipeline(tiny_run)
    batches = []
    pipe.unet.register_forward_pre_hook(lambda module, args: batches.append(args[0].shape[0]))
    images = generate(pipe, [decode_condition(42), (None, 1, None)], [0, 1], num_inference_steps=3,
                      guidance_scale=guidance_scale)
    # Guidance batches the unconditional and conditional predictions into the same call.
    assert batches == [unet_batch] * 3 and len(images) == 2


@pytest.mark.e2e
@pytest.mark.parametrize("scheduler", list(SCHEDULERS))
def test_every_scheduler_runs(tiny_run, tmp_path, scheduler):
    paths = sample(tiny_run, tmp_path, "--condition", "7", "--num_images", "1", "--scheduler", scheduler)
    image = pixels(paths[0])
    assert image.std() > 0  # a picture, not a constant (NaN latents clamp to one value)
