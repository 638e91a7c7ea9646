"""The pipeline code shipped with every saved model (issue 12): generated from utils/, loaded by plain diffusers
with ``trust_remote_code=True``, following diffusers' pipeline conventions; and never run by our own loader.

The model is a short train_fairface.py run (as a user runs it), so what is tested is what training writes.
The clean-venv runs (only torch, diffusers, safetensors; repo not importable) are in tests/test_hub.py, against
the recorded upload laid out as the Hub cache and the local release.
"""

import ast
import json
import os
import shutil
import sys

import numpy as np
import pytest
import torch

from conftest import run_script
from utils import labels
from utils.model import pipeline
from utils.hub import remote_code
from utils.model.pipeline import generate, load_pipeline

STEPS = 4
STDLIB = set(sys.stdlib_module_names)


def copy_release(run, target):
    return str(shutil.copytree(run, target, ignore=shutil.ignore_patterns("checkpoint-*", "logs", "*.png")))


def plant(folder, marker):
    """Every shipped .py file under ``folder`` also writes ``marker`` when it is imported: proof it was run."""
    planted = 0
    for root, _, names in os.walk(folder):
        for name in names:
            if name.endswith(".py"):
                path = os.path.join(root, name)
                code = open(path, encoding="utf-8").read()
                with open(path, "w", encoding="utf-8") as f:
                    f.write(f"open({str(marker)!r}, 'a').write({path!r} + '\\n')\n{code}")
                planted += 1
    return planted


def images_of(pipe, output_type="np", **kwargs):
    generators = [torch.Generator().manual_seed(s) for s in (0, 1)]
    return pipe(condition_ids=[42, 58], generator=generators, num_inference_steps=STEPS, guidance_scale=2.0,
                output_type=output_type, **kwargs).images


@pytest.fixture(scope="module")
def short_run(tiny_run):
    """The session's tiny run (conftest.tiny_run: epoch_1..3 snapshots and the release), whose framing and
    condition-in-time-embedding variants the shipped code must draw too; only read or copied here."""
    return tiny_run


@pytest.fixture(scope="module")
def remote_pipe(short_run):
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(short_run, trust_remote_code=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# ---------------------------------------------------------------------------------------------- the shipped code
@pytest.mark.e2e
def test_every_save_ships_the_generated_code(short_run):
    source = remote_code.pipeline_source()
    for folder in (short_run, os.path.join(short_run, "epoch_1"), os.path.join(short_run, "epoch_2")):
        for path in remote_code.CODE_FILES:
            with open(os.path.join(folder, path), encoding="utf-8") as f:
                assert f.read() == source, f"{folder}/{path} is not the code generated from utils/ now"
        with open(os.path.join(folder, "model_index.json")) as f:
            index = json.load(f)
        assert index["_class_name"] == ["fairface_pipeline", "FairFacePipeline"]
        assert index["condition_encoder"] == ["condition_encoder", "ConditionEncoder"]
        assert index["unet"] == ["diffusers", "UNet2DConditionModel"]


def test_generated_code_is_all_of_utils_self_contained():
    source = remote_code.pipeline_source()
    tree = ast.parse(source)
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                 and not node.level}
    assert not [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level], "relative import left"
    assert imported - STDLIB <= {"torch", "diffusers", "tqdm", "huggingface_hub"}, imported - STDLIB  # diffusers' deps
    # Generated from the modules as they are, not from a chosen subset: every top-level definition is there.
    shipped = remote_code._defined_names(source)
    for module in (labels, pipeline):
        with open(module.__file__, encoding="utf-8") as f:
            assert remote_code._defined_names(f.read()) <= shipped, module.__name__


def test_a_foreign_relative_import_is_refused(tmp_path, monkeypatch):
    fake = tmp_path / "pipeline.py"
    fake.write_text('"""doc"""\nfrom .labels import AGES\nfrom .data import load_fairface\n')
    monkeypatch.setattr(pipeline, "__file__", str(fake))
    with pytest.raises(ValueError, match=r"imports \.data, which is not shipped"):
        remote_code.pipeline_source()


# ---------------------------------------------------------------------------------------------- plain diffusers
@pytest.mark.e2e
def test_plain_diffusers_draws_what_load_pipeline_draws(remote_pipe, short_run):
    assert type(remote_pipe).__name__ == "FairFacePipeline"
    assert type(remote_pipe).__module__.startswith("diffusers_modules."), "loaded from the shipped file"
    assert type(remote_pipe.condition_encoder).__module__.startswith("diffusers_modules.")
    ours = load_pipeline(short_run)
    ours.set_progress_bar_config(disable=True)
    assert np.array_equal(images_of(remote_pipe), images_of(ours))
    # Attributes by name, any of them left out, are the same conditions as by index.
    by_name = remote_pipe(age="20-29", gender="female", race="black", generator=torch.Generator().manual_seed(3),
                          num_inference_steps=STEPS, output_type="np").images
    by_index = ours(conditions=[(3, 1, 2)], generator=torch.Generator().manual_seed(3), num_inference_steps=STEPS,
                    output_type="np").images
    assert np.array_equal(by_name, by_index)
    partial = remote_pipe(gender="Female", generator=torch.Generator().manual_seed(3), num_inference_steps=STEPS,
                          output_type="np").images
    assert partial.shape == (1, 32, 32, 3) and not np.array_equal(partial, by_name)


@pytest.mark.e2e
def test_output_types_and_images_per_condition(remote_pipe):
    as_np, as_pt, as_pil = (images_of(remote_pipe, kind) for kind in ("np", "pt", "pil"))
    assert as_np.shape == (2, 32, 32, 3) and as_np.dtype == np.float32 and 0 <= as_np.min() <= as_np.max() <= 1
    assert isinstance(as_pt, torch.Tensor) and as_pt.shape == (2, 3, 32, 32) and -1 <= as_pt.min() <= as_pt.max() <= 1
    assert np.allclose(((as_pt + 1) / 2).permute(0, 2, 3, 1).numpy(), as_np, atol=1e-6)
    assert [image.size for image in as_pil] == [(32, 32)] * 2
    assert np.abs(np.asarray(as_pil[1], dtype=np.float32) / 255 - as_np[1]).max() <= 1 / 255 + 1e-6
    generators = [torch.Generator().manual_seed(s) for s in (0, 0, 1, 1)]
    four = remote_pipe(condition_ids=[42, 58], num_images_per_condition=2, generator=generators,
                       num_inference_steps=STEPS, output_type="np").images
    # Condition-major; another batch size changes CPU kernels' rounding only.
    assert four.shape == (4, 32, 32, 3) and np.allclose(four[[0, 2]], as_np, atol=1e-5)


@pytest.mark.e2e
def test_callback_on_step_end(remote_pipe):
    seen = []

    def record(pipe, i, t, callback_kwargs):
        seen.append((i, int(t), tuple(callback_kwargs["latents"].shape)))
        return callback_kwargs

    plain = images_of(remote_pipe)
    assert np.array_equal(images_of(remote_pipe, callback_on_step_end=record), plain)
    assert [s[0] for s in seen] == list(range(STEPS)) and {s[2] for s in seen} == {(2, 3, 32, 32)}
    assert [s[1] for s in seen] == [int(t) for t in remote_pipe.scheduler.timesteps]

    def flatten_last(pipe, i, t, callback_kwargs):  # returned tensors replace the pipeline's
        return {"latents": torch.zeros_like(callback_kwargs["latents"])} if i == STEPS - 1 else {}

    assert np.all(images_of(remote_pipe, callback_on_step_end=flatten_last) == 0.5)
    with pytest.raises(ValueError, match="callback_on_step_end_tensor_inputs"):
        images_of(remote_pipe, callback_on_step_end=record, callback_on_step_end_tensor_inputs=["prompt_embeds"])


@pytest.mark.e2e
def test_progress_bar_config_and_dtype(remote_pipe, short_run, capfd):
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(short_run, trust_remote_code=True)
    capfd.readouterr()
    images_of(pipe)
    assert f"{STEPS}/{STEPS}" in capfd.readouterr().err  # diffusers' progress bar, by default
    pipe.set_progress_bar_config(disable=True)
    reference = images_of(pipe)
    assert f"{STEPS}/{STEPS}" not in capfd.readouterr().err
    pipe.to("cpu", torch.float64)  # (a float64 draw starts from other noise: torch's CPU randn differs per dtype)
    assert pipe.unet.dtype == torch.float64 and pipe.condition_encoder.embedding.weight.dtype == torch.float64
    assert images_of(pipe, output_type="pt").dtype == torch.float32 and np.isfinite(images_of(pipe)).all()
    pipe.to(dtype=torch.float32)  # float32 -> float64 -> float32 is exact: the same images again
    assert np.array_equal(images_of(pipe), reference)


# ---------------------------------------------------------------------------------------------- our loader: no code
@pytest.fixture(scope="module")
def planted_run(short_run, tmp_path_factory):
    """The run's release and snapshots, each shipped .py file planted to leave a trace if it is ever run."""
    root = tmp_path_factory.mktemp("planted")
    folder = copy_release(short_run, root / "run")
    marker = root / "EXECUTED"
    assert plant(folder, marker) == 2 * 4  # the release and epoch_1..3: two files each
    return folder, marker


@pytest.mark.e2e
def test_planted_code_runs_under_trust_remote_code(short_run, tmp_path):
    """The plant works: plain diffusers with trust_remote_code does run it (so the tests below can fail)."""
    from diffusers import DiffusionPipeline

    folder = copy_release(short_run, tmp_path / "copy")
    marker = tmp_path / "EXECUTED"
    plant(folder, marker)
    DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)
    assert marker.exists()


@pytest.mark.e2e
def test_load_pipeline_never_runs_shipped_code(planted_run, short_run):
    folder, marker = planted_run
    pipe = load_pipeline(folder)
    assert type(pipe) is pipeline.FairFacePipeline and not marker.exists()
    assert np.array_equal(images_of(pipe, show_progress=False), images_of(load_pipeline(short_run), show_progress=False))


@pytest.mark.e2e
def test_scripts_never_run_shipped_code(planted_run, tmp_path):
    folder, marker = planted_run
    run_script("sample_fairface.py", "--model", folder, "--condition", "42", "--num_images", "1",
               "--num_inference_steps", "2", "--output_dir", tmp_path / "samples")
    run_script("make_grid.py", "--run_dir", folder, "--conditions", "0", "42", "--num_inference_steps", "2",
               "--output", tmp_path / "grid.png")
    assert len(os.listdir(tmp_path / "samples")) == 1 and (tmp_path / "grid.png").exists()
    assert not marker.exists(), marker.read_text()


@pytest.mark.e2e
def test_evaluate_never_runs_shipped_code(planted_run, demo_dataset, tiny_models, tmp_path):
    from test_evaluate import EVAL_ARGS

    folder, marker = planted_run
    run_script("evaluate_fairface.py", "--model", folder, "--dataset_name", demo_dataset, "--classifier",
               tiny_models["clip"], "--feature_model", tiny_models["dinov2"], "--conditions", "0", "42",
               "--num_images_per_condition", "1", "--output_dir", tmp_path / "eval", *EVAL_ARGS)
    assert (tmp_path / "eval" / "metrics.json").exists() and not marker.exists()


@pytest.mark.e2e
def test_releases_without_code_still_load(short_run, tmp_path):
    """What releases looked like before the code shipped: model_index.json names this repository's classes."""
    folder = copy_release(short_run, tmp_path / "old")
    for path in remote_code.CODE_FILES:
        os.remove(os.path.join(folder, path))
    with open(os.path.join(folder, "model_index.json")) as f:
        index = json.load(f)
    index.update(_class_name="FairFacePipeline", condition_encoder=["utils.pipeline", "ConditionEncoder"])
    with open(os.path.join(folder, "model_index.json"), "w") as f:
        json.dump(index, f)
    old = generate(load_pipeline(folder), [(3, 1, 2)], [5], num_inference_steps=STEPS, output_type="np")
    new = generate(load_pipeline(short_run), [(3, 1, 2)], [5], num_inference_steps=STEPS, output_type="np")
    assert np.array_equal(old[0], new[0])


# ---------------------------------------------------------------------------------------------- old releases
OLD_RELEASE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "release-2026-12-before-utils-move")


def test_a_release_saved_before_utils_was_regrouped_still_loads():
    """tests/fixtures/: a release saved by the code before utils/ moved into folders (issue 32), with the pixels
    that code drew. Our loader and plain diffusers (the release's own shipped code) still draw them."""
    from diffusers import DiffusionPipeline

    expected = np.load(OLD_RELEASE + ".npy")
    for pipe in (load_pipeline(OLD_RELEASE), DiffusionPipeline.from_pretrained(OLD_RELEASE, trust_remote_code=True)):
        pipe.set_progress_bar_config(disable=True)
        images = pipe(condition_ids=[42, 125], generator=[torch.Generator().manual_seed(s) for s in (0, 1)],
                      num_inference_steps=4, guidance_scale=2.0, output_type="np").images
        assert np.allclose(images, expected, atol=1e-5), type(pipe).__module__
