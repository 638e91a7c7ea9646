"""Framing (issue 15): the FairFace config as a fourth, optional condition (tight = 0.25, wide = 1.25).

A tiny model trained on the generated two-layout data draws the framing it is asked for (read back from pixels
by utils.data.demo_data.measure_framing); models saved before framing existed still load and sample; every script
refuses a bad --framing with a one-line error.
"""

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

import make_grid
import sample_fairface
from conftest import parse_error, run_script
from utils.data import fairface
from utils import grid
from utils.run import objective
from utils.data.demo_data import BACKGROUND
from utils.labels import CONFIG_FRAMING, FRAMINGS, decode_condition
from utils.model.pipeline import ConditionEncoder, FairFacePipeline, build_unet, generate, load_pipeline

FAST = ["--num_inference_steps", "3"]


@pytest.fixture(scope="module")
def framing_run(demo_model):
    """A model trained with the framing condition: the demo recipe's 315 steps (conftest's demo_model, shared
    with tests/test_app.py and tests/test_distill.py, so the suite trains it once)."""
    return demo_model


@pytest.fixture(scope="module")
def old_model(tmp_path_factory):
    """A pipeline as saved before framing existed: its encoder config has no "framings" entry."""
    folder = tmp_path_factory.mktemp("old") / "model"
    torch.manual_seed(0)
    encoder = ConditionEncoder(embed_dim=32)
    unet = build_unet(32, (32, 64), layers_per_block=1, cross_attention_dim=32)
    from diffusers import DPMSolverMultistepScheduler

    pipe = FairFacePipeline(unet=unet, scheduler=DPMSolverMultistepScheduler(), condition_encoder=encoder)
    pipe.save_pretrained(folder)
    config_path = folder / "condition_encoder" / "config.json"
    config = json.loads(config_path.read_text())
    del config["framings"]
    config_path.write_text(json.dumps(config))
    return str(folder)


# ------------------------------------------------------------------------------------------------ round trip
def _figure_area(images):
    """Share of the top 3/4 of each image (above any shirt) that is not background: the head's size."""
    pixels = np.stack([np.asarray(image.resize((64, 64), Image.Resampling.BILINEAR), dtype=np.float64)
                       for image in images])
    return (np.linalg.norm(pixels[:, :48] - np.asarray(BACKGROUND, dtype=np.float64), axis=-1) > 60).mean((1, 2))


@pytest.mark.e2e
def test_requested_framing_is_drawn(framing_run):
    """Same conditions and seeds asked tight and wide: the wide faces are drawn smaller (more margin).

    The head's size tells them apart: on the drawn faces, wide heads cover 0.8^2 = 64 % of the tight ones'
    area."""
    pipe = load_pipeline(framing_run)
    assert pipe.labels["framing"] == list(FRAMINGS)
    conditions = [decode_condition(c) for c in range(0, 126, 3)]  # 42 conditions, every attribute value
    seeds = list(range(len(conditions)))
    tight, wide = (_figure_area(generate(pipe, conditions, seeds, batch_size=64, num_inference_steps=10,
                                         guidance_scale=2.0, framing=framing)) for framing in FRAMINGS)
    assert np.mean(wide < tight) >= 0.9, f"wide smaller in {np.mean(wide < tight):.0%} of pairs"
    assert np.median(wide / tight) < 0.9


@pytest.mark.e2e
def test_sample_and_grid_files_carry_the_framing(framing_run, tmp_path):
    paths = sample_fairface.main(sample_fairface.parse_args(
        ["--model", framing_run, "--condition", "42", "--num_images", "1", "--framing", "wide", "--grid",
         "--output_dir", str(tmp_path), *FAST]))
    assert [os.path.basename(p) for p in paths] == ["cond042_20-29_male_east-asian_wide_seed0000.png"]
    assert (tmp_path / "grid.png").is_file()
    # make_grid draws one fixed framing (wide) by default: the same tile as asking for wide explicitly
    tiles = {}
    for name, flags in (("default", []), ("wide", ["--framing", "wide"]), ("any", ["--framing", "any"])):
        path = make_grid.main(make_grid.parse_args(["--run_dir", framing_run, "--conditions", "42", *flags,
                                                    "--output", str(tmp_path / f"{name}.png"), *FAST]))
        tiles[name] = np.asarray(Image.open(path).convert("RGB"))[-grid.tile_size(32):, -grid.tile_size(32):]
    assert np.array_equal(tiles["default"], tiles["wide"])
    assert not np.array_equal(tiles["default"], tiles["any"])  # unknown framing: another token, another image


# ------------------------------------------------------------------------------------------ the encoder rows
def test_framing_rows_are_appended_after_the_attribute_rows():
    """The attribute look-ups of the model card's snippet stay valid: framing rows are 21, 22 (unknown 23)."""
    encoder = ConditionEncoder(embed_dim=8, framings=FRAMINGS)
    table = encoder.embedding.weight
    attributes = torch.tensor([[4, 1, 2, 1], [-1, -1, -1, -1], [0, 0, 0, 0]])
    tokens = encoder(attributes)
    assert tokens.shape == (3, 4, 8) and encoder.num_tokens == 4
    assert torch.equal(tokens[0], table[[4, 11, 15, 22]])
    assert torch.equal(tokens[1], table[[9, 12, 20, 23]])
    assert torch.equal(tokens[2], table[[0, 10, 13, 21]])
    assert torch.equal(encoder(attributes[:, :3])[0], table[[4, 11, 15, 23]])  # no framing column: unknown


def test_old_encoder_ignores_a_framing_column():
    old = ConditionEncoder(embed_dim=8)
    attributes = torch.tensor([[4, 1, 2, 1]])
    assert old.num_tokens == 3 and old.embedding.num_embeddings == 21
    assert torch.equal(old(attributes), old(attributes[:, :3]))


def test_model_saved_without_framing_loads_and_samples(old_model, tmp_path):
    pipe = load_pipeline(old_model)
    assert "framing" not in pipe.labels and pipe.condition_encoder.num_tokens == 3
    paths = sample_fairface.main(sample_fairface.parse_args(
        ["--model", old_model, "--condition", "42", "--num_images", "1", "--output_dir", str(tmp_path), *FAST]))
    assert [os.path.basename(p) for p in paths] == ["cond042_20-29_male_east-asian_seed0000.png"]
    with pytest.raises(ValueError, match="without framing"):
        pipe(condition_ids=[42], framing="tight", num_inference_steps=2)


# ---------------------------------------------------------------------------------------------- data, drops
def test_each_row_carries_its_config_framing(demo_dataset):
    merged = fairface.load_fairface(demo_dataset)
    images = fairface.FairFaceImages(merged, 32)
    assert set(np.unique(images.attributes[:, 3])) == {CONFIG_FRAMING["0.25"], CONFIG_FRAMING["1.25"]}
    one = fairface.load_fairface(demo_dataset, ["1.25"])
    assert set(fairface.FairFaceImages(one, 32).attributes[:, 3]) == {1}
    without = fairface.FairFaceImages(merged.remove_columns("framing"), 32)  # a dataset without the column: unknown
    assert set(without.attributes[:, 3]) == {-1}


def test_framing_has_its_own_dropout():
    attributes = torch.tensor([[4, 1, 2, 1]] * 64)
    pixels = torch.zeros(64, 3, 4, 4, dtype=torch.uint8)
    generator = torch.Generator().manual_seed(0)
    _, dropped = objective.prepare_batch(pixels, attributes, generator, False, 0.0, 0.0, framing_drop_prob=1.0)
    assert torch.equal(dropped[:, :3], attributes[:, :3]) and bool((dropped[:, 3] == -1).all())
    _, kept = objective.prepare_batch(pixels, attributes, generator, False, 0.0, 1.0, framing_drop_prob=0.0)
    assert bool((kept[:, :3] == -1).all()) and torch.equal(kept[:, 3], attributes[:, 3])


# ------------------------------------------------------------------------------------------------ CLI errors
@pytest.mark.parametrize("script, extra", [
    ("sample_fairface.py", ["--condition", "42"]),
    ("make_grid.py", ["--atlas"]),
    ("evaluate_fairface.py", []),
])
def test_bad_framing_is_a_one_line_error(script, extra, tmp_path):
    code, stderr = parse_error(script, "--model", tmp_path, *extra, "--framing", "medium")
    assert code == 2 and "Traceback" not in stderr
    assert "error: argument --framing: invalid choice: 'medium'" in stderr.strip().splitlines()[-1]


@pytest.mark.e2e
def test_framing_for_a_model_without_it_is_a_one_line_error(old_model, tmp_path):
    result = run_script("sample_fairface.py", "--model", old_model, "--condition", "42", "--framing", "wide",
                        "--output_dir", tmp_path, *FAST, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].endswith("was trained without the framing condition; leave "
                                                           "--framing out")
    assert not os.listdir(tmp_path)
