"""Publishing to the Hugging Face Hub (issue 5): release folder, model card, allowlisted uploads, use by repo id.

No network. train_fairface.py and ``python -m utils.hub`` run as subprocesses with tests/fake_hub on PYTHONPATH:
its sitecustomize.py replaces huggingface_hub's create_repo/upload_folder (the network boundary, nothing else)
by a recorder of what would be uploaded. The recorded upload is then laid out as the Hub cache and loaded by repo
id with HF_HUB_OFFLINE=1, by this repository's code and by the model card's standalone snippet.
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import Future
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from conftest import REPO, TINY_MODEL_ARGS, run_script

FAKE_HUB = os.path.join(REPO, "tests", "fake_hub")
TOKEN = "hf_FAKEtoken1234567890"
REPO_ID = "someone/tiny-fairface"
PIPELINE_FILES = {"model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
                  "condition_encoder/config.json", "condition_encoder/diffusion_pytorch_model.safetensors",
                  "scheduler/scheduler_config.json",
                  "fairface_pipeline.py", "condition_encoder/condition_encoder.py"}  # the trust_remote_code code
STEPS = 5  # --num_inference_steps of the run: samples, samples.png and the card's snippet


def fake_hub_env(record_dir, **extra):
    path = os.pathsep.join(p for p in (FAKE_HUB, os.environ.get("PYTHONPATH")) if p)
    return {"PYTHONPATH": path, "FAKE_HUB_DIR": str(record_dir), "HF_TOKEN": TOKEN, **extra}


def files_under(folder):
    return {os.path.relpath(os.path.join(root, name), folder).replace(os.sep, "/")
            for root, _, names in os.walk(folder) for name in names}


def copy_run(output_dir, target):
    """The run's release and snapshots, without the (large) checkpoints."""
    return shutil.copytree(output_dir, target, ignore=shutil.ignore_patterns("checkpoint-*", "logs"))


@pytest.fixture(scope="module")
def pushed_run(tmp_path_factory):
    """2 epochs of 4 steps, trained and pushed as a user does it, with snapshots; uploads recorded locally."""
    from utils.data.demo_data import make_demo_dataset

    root = tmp_path_factory.mktemp("hub")
    data = make_demo_dataset(str(root / "data"), num_images=64, resolution=32)
    output_dir, record = root / "tiny-fairface", root / "hub-record"
    result = run_script(
        "train_fairface.py", "--dataset_name", data, "--output_dir", output_dir, *TINY_MODEL_ARGS,
        "--report_to", "tensorboard", "--train_batch_size", "16", "--num_epochs", "2", "--save_model_epochs", "1",
        "--save_images_epochs", "2", "--checkpointing_steps", "4", "--num_inference_steps", STEPS, "--use_ema",
        "--push_to_hub", "--hub_model_id", REPO_ID, "--hub_push_snapshots",
        env=fake_hub_env(record, FAKE_HUB_DELAY="1"))
    with open(record / "calls.jsonl") as f:
        calls = [json.loads(line) for line in f]
    return SimpleNamespace(root=str(root), output_dir=str(output_dir), record=str(record), calls=calls,
                           uploaded=str(record / REPO_ID), log=result.stdout + result.stderr)


@pytest.fixture(scope="module")
def hub_cache(pushed_run, tmp_path_factory):
    """HF_HOME whose hub cache holds exactly the recorded upload, as ``hf download`` would have left it."""
    home = tmp_path_factory.mktemp("hf-home")
    repo = home / "hub" / f"models--{REPO_ID.replace('/', '--')}"
    revision = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(pushed_run.uploaded, repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    return {"HF_HOME": str(home), "HF_HUB_CACHE": str(home / "hub"), "HF_HUB_OFFLINE": "1"}


# ---------------------------------------------------------------------------------------------- uploads
@pytest.mark.e2e
def test_push_sends_the_release_and_asked_for_snapshots_only(pushed_run):
    creates = [c for c in pushed_run.calls if c["call"] == "create_repo"]
    assert [(c["repo_id"], c["exist_ok"], c["private"]) for c in creates] == [(REPO_ID, True, None)]
    uploads = {c["path_in_repo"]: c for c in pushed_run.calls if c["call"] == "upload_folder"}
    assert set(uploads) == {"epoch_1", "epoch_2", None} and len(pushed_run.calls) == 4
    expected = {"README.md", "samples.png"} | PIPELINE_FILES
    expected |= {f"epoch_{epoch}/{name}" for epoch in (1, 2) for name in PIPELINE_FILES}
    assert files_under(pushed_run.uploaded) == expected

    # The allowlist did the work: the run folder holds much more than was sent.
    local = files_under(pushed_run.output_dir)
    for unsent in ("checkpoint-8/optimizer.bin", "checkpoint-8/random_states_0.pkl", "checkpoint-4/training_state.json",
                   "sample_epoch_2_0.png"):
        assert unsent in local
    assert any(name.startswith("logs/") for name in local)
    assert not [n for n in os.listdir(pushed_run.output_dir) if n.startswith(".")  # besides the run lock and release list
                and n not in (".run-lock", ".release-files.json")], "temporary release folders left"
    assert not [n for n in files_under(pushed_run.uploaded) if n.endswith((".bin", ".pkl", ".pt", ".ckpt"))]

    # Snapshots went in the background, and the release waited for them before its own commit.
    for name in ("epoch_1", "epoch_2"):
        assert uploads[name]["run_as_future"] and uploads[name]["thread"] != "MainThread"
    release = uploads[None]
    assert not release["run_as_future"] and release["start"] >= max(uploads[n]["end"] for n in ("epoch_1", "epoch_2"))
    assert release["delete_patterns"] == ["unet/*", "condition_encoder/*", "scheduler/*"]  # no stale weights
    assert f"https://huggingface.co/{REPO_ID}" in pushed_run.log


@pytest.mark.e2e
def test_the_token_is_never_passed_printed_or_written(pushed_run):
    assert not [c for c in pushed_run.calls if c["token_argument"]], "huggingface_hub resolves the token itself"
    assert TOKEN not in pushed_run.log
    for folder in (pushed_run.output_dir, pushed_run.record):
        for name in files_under(folder):
            with open(os.path.join(folder, name), "rb") as f:
                assert TOKEN.encode() not in f.read(), name
    # The tracker config (hparams.yml) is the run's scalar arguments: none of them is token-like.
    assert [n for n in files_under(pushed_run.output_dir) if n.endswith("hparams.yml")]
    import train_fairface

    names = vars(train_fairface.parse_args([])).keys()
    assert not [n for n in names if re.search(r"token|secret|passw|api_?key|credential", n)]


def test_hub_model_id_is_checked_before_training(capsys):
    import train_fairface

    for bad in ("a/b/c", "no spaces/allowed"):
        with pytest.raises(SystemExit) as exit_info:
            train_fairface.parse_args(["--push_to_hub", "--hub_model_id", bad])
        assert exit_info.value.code == 2
        assert "--hub_model_id" in capsys.readouterr().err
    assert train_fairface.parse_args(["--hub_model_id", "user/repo.v2"]).hub_model_id == "user/repo.v2"


# ---------------------------------------------------------------------------------------------- the card
@pytest.mark.e2e
def test_model_card_metadata_and_sections(pushed_run):
    from huggingface_hub import ModelCard

    path = os.path.join(pushed_run.output_dir, "README.md")
    card = ModelCard.load(path)
    data = card.data.to_dict()
    assert data["license"] == "mit"  # synthetic demo data: no FairFace image in the weights
    assert data["library_name"] == "diffusers" and data["pipeline_tag"] == "unconditional-image-generation"
    assert {"diffusers", "class-conditional", "image-generation", "faces", "fairface", "pytorch"} <= set(data["tags"])
    assert "datasets" not in data  # a local folder is no Hub dataset; the text says what it was
    text = card.text
    assert "synthetic demo data" in text
    with open(os.path.join(pushed_run.uploaded, "README.md"), encoding="utf-8") as f:
        assert f.read() == card.content  # the card sent is the card written

    ids = [int(m) for m in re.findall(r"^\| (\d+) \| [^|]+ \| (?:Male|Female) \| [^|]+ \|$", text, re.M)]
    assert ids == list(range(126))
    assert "| 42 | 20-29 | Male | East Asian |" in text
    for needed in ("## Intended use, limitations and bias", "perceived", "binary", "surveillance",
                   "evaluate_fairface.py", "Kärkkäinen", "WACV 2021", "CC BY 4.0",
                   f"hf download {REPO_ID}", f"huggingface-cli download {REPO_ID}",
                   f"python sample_fairface.py --model {REPO_ID} --condition 42", "![", "samples.png",
                   "## Use with diffusers", "repository's own pipeline", "If you won't run remote code",
                   f"python app.py --model {REPO_ID}"):
        assert needed in text, needed
    first = re.findall(r"```python\n(.*?)```", text, re.S)[0]  # the first "how to use" is plain diffusers
    assert f'DiffusionPipeline.from_pretrained("{REPO_ID}", trust_remote_code=True)' in first
    for row in ("| optimizer steps | 8 |", "| epochs | 2 |", "| training images | 64 |",
                "| batch size | 16 (16 per device x 1 process(es) x 1 accumulation step(s)) |"):
        assert row in text, row
    assert "EMA weights" in text and "min-SNR" in text and "v_prediction" in text and "float32" in text
    assert pushed_run.root not in card.content, "the card must not leak local paths"

    with Image.open(os.path.join(pushed_run.output_dir, "samples.png")) as grid:
        assert grid.width > 4 * 96 and grid.height > 7 * 96  # 7 conditions x 4 seeds, labelled


@pytest.mark.e2e
def test_model_card_of_a_fairface_run(pushed_run):
    import train_fairface
    from utils.hub import model_card
    from utils.model.pipeline import load_pipeline

    args = train_fairface.parse_args(["--output_dir", "fairface-diffusion-128", "--use_ema"])  # the defaults
    card = model_card.build_model_card(load_pipeline(pushed_run.output_dir), args, 173_488, 50_000)
    assert card.data.license == "cc-by-4.0" and card.data.datasets == ["HuggingFaceM4/FairFace"]
    assert "synthetic-data" not in card.data.tags
    assert "hf download your-username/fairface-diffusion-128" in card.text  # until the push knows the account
    assert "each face is seen twice" in card.text and "validation split was used for training too" in card.text
    assert "Demo model" not in card.text and "credit Kärkkäinen & Joo" in card.text


# ---------------------------------------------------------------------------------------------- use by repo id
@pytest.mark.e2e
def test_uploaded_release_loads_offline_by_repo_id(pushed_run, hub_cache, tmp_path):
    """What was uploaded suffices: load_pipeline and sample_fairface.py find it by repo id in the cache, offline."""
    check = ("import sys, torch; from utils.model.pipeline import load_pipeline\n"
             f"hub, local = load_pipeline({REPO_ID!r}), load_pipeline(sys.argv[1])\n"
             "for name in ('unet', 'condition_encoder'):\n"
             "    a, b = getattr(hub, name).state_dict(), getattr(local, name).state_dict()\n"
             "    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name\n"
             "print('same', type(hub.scheduler).__name__)\n")
    result = subprocess.run([sys.executable, "-c", check, pushed_run.output_dir], cwd=REPO, capture_output=True,
                            text=True, timeout=300, env={**os.environ, **hub_cache})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "same DPMSolverMultistepScheduler" in result.stdout

    run_script("sample_fairface.py", "--model", REPO_ID, "--condition", "42", "--num_images", "1",
               "--num_inference_steps", "3", "--output_dir", tmp_path / "samples", env=hub_cache)
    [name] = os.listdir(tmp_path / "samples")
    with Image.open(tmp_path / "samples" / name) as image:
        assert image.size == (32, 32)


@pytest.mark.e2e
def test_card_snippet_samples_without_this_repository(pushed_run, hub_cache, tmp_path):
    """The card's Python block, run with only the libraries (not this repo) importable, from the offline cache."""
    from utils.labels import decode_condition
    from utils.model.pipeline import generate, load_pipeline

    with open(os.path.join(pushed_run.output_dir, "README.md"), encoding="utf-8") as f:
        [snippet] = [b for b in re.findall(r"```python\n(.*?)```", f.read(), re.S) if "trust_remote_code" not in b]
    assert f'repo = "{REPO_ID}"' in snippet
    (tmp_path / "snippet.py").write_text(snippet)
    runner = ("import runpy, sys\n"
              "runpy.run_path('snippet.py', run_name='__main__')\n"
              "mine = [n for n, m in sys.modules.items()\n"
              f"        if (getattr(m, '__file__', None) or '').startswith({REPO!r})]\n"
              "assert not mine, mine\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-c", runner], cwd=tmp_path, capture_output=True, text=True,
                            timeout=300, env={**env, **hub_cache})
    assert result.returncode == 0, result.stderr[-3000:]
    with Image.open(tmp_path / "face.png") as face:
        assert face.size == (32, 32) and face.mode == "RGB"
        face = np.asarray(face, dtype=np.int16)
    # ... and it draws what this repository's pipeline draws for condition 42, seed 0.
    expected = generate(load_pipeline(pushed_run.output_dir), [decode_condition(42)], [0],
                        num_inference_steps=STEPS, guidance_scale=2.0)[0]
    assert np.abs(face - np.asarray(expected, dtype=np.int16)).max() <= 1


# ---------------------------------------------------------------------------------------------- plain diffusers
# The snippets, and the card's first block when given, as a user without this repository runs them.
PLAIN_DIFFUSERS = f"""
import runpy, sys
import numpy as np, torch
from diffusers import DiffusionPipeline

model, card_block, out, repo = sys.argv[1:5]
pipe = DiffusionPipeline.from_pretrained(model, trust_remote_code=True)
def draw(output_type):
    generators = [torch.Generator().manual_seed(s) for s in (0, 1)]
    return pipe(condition_ids=[42, 58], generator=generators, num_inference_steps={STEPS}, guidance_scale=2.0,
                output_type=output_type).images
result = dict(pil=np.stack([np.asarray(i) for i in draw("pil")]), np=draw("np"), pt=draw("pt").numpy(),
              named=np.asarray(pipe(age="20-29", gender="female", race="black", num_inference_steps={STEPS},
                                    generator=torch.Generator().manual_seed(3)).images[0]))
if card_block != "-":
    result["card"] = np.stack([np.asarray(i) for i in runpy.run_path(card_block)["images"]])
mine = [n for n, m in sys.modules.items() if (getattr(m, "__file__", None) or "").startswith(repo)]
assert not mine, mine
np.savez(out, **result)
"""


@pytest.mark.e2e
@pytest.mark.parametrize("where", ["local release folder", "repo id from the offline Hub cache"])
def test_plain_diffusers_in_a_clean_venv_draws_what_load_pipeline_draws(pushed_run, hub_cache, clean_python,
                                                                        tmp_path, where):
    """trust_remote_code from the uploaded files alone: no fairface-diffusion code importable, cwd elsewhere."""
    import torch
    from utils.model.pipeline import load_pipeline

    card_block = "-"
    if where.startswith("repo id"):
        with open(os.path.join(pushed_run.output_dir, "README.md"), encoding="utf-8") as f:
            first = re.findall(r"```python\n(.*?)```", f.read(), re.S)[0]  # the card's first "how to use"
        assert f'DiffusionPipeline.from_pretrained("{REPO_ID}", trust_remote_code=True)' in first
        (tmp_path / "card.py").write_text(first)
        card_block = str(tmp_path / "card.py")
    model = REPO_ID if where.startswith("repo id") else pushed_run.output_dir
    (tmp_path / "plain.py").write_text(PLAIN_DIFFUSERS)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([clean_python, "-I", "plain.py", model, card_block, "out.npz", REPO], cwd=tmp_path,
                            capture_output=True, text=True, timeout=600, env={**env, **hub_cache})
    assert result.returncode == 0, result.stderr[-3000:]
    got = np.load(tmp_path / "out.npz")

    ours = load_pipeline(pushed_run.output_dir)
    ours.set_progress_bar_config(disable=True)

    def draw(output_type, **kwargs):
        return ours(generator=[torch.Generator().manual_seed(s) for s in (0, 1)], num_inference_steps=STEPS,
                    guidance_scale=2.0, output_type=output_type, **kwargs).images

    assert np.allclose(got["np"], draw("np", condition_ids=[42, 58]), atol=1e-5)
    assert np.allclose(got["pt"], draw("pt", condition_ids=[42, 58]).numpy(), atol=1e-5)
    expected_pil = np.stack([np.asarray(i) for i in draw("pil", condition_ids=[42, 58])]).astype(np.int16)
    assert got["pil"].shape == (2, 32, 32, 3) and np.abs(got["pil"] - expected_pil).max() <= 1
    named = ours(conditions=[(3, 1, 2)], generator=torch.Generator().manual_seed(3), num_inference_steps=STEPS)
    assert np.abs(got["named"] - np.asarray(named.images[0], dtype=np.int16)).max() <= 1
    if "card" in got:  # the card's block: condition ids 42 and 58, seeds 0 and 1, the card's steps and guidance
        assert np.abs(got["card"] - expected_pil).max() <= 1


# ---------------------------------------------------------------------------------------------- the Space
@pytest.mark.e2e
def test_space_next_to_the_model_runs_the_app_on_the_repo_id(pushed_run, hub_cache, tmp_path):
    run = copy_run(pushed_run.output_dir, tmp_path / "run")
    record = tmp_path / "record"
    result = subprocess.run([sys.executable, "-m", "utils.hub", str(run), "--hub_model_id", REPO_ID, "--space"],
                            cwd=REPO, capture_output=True, text=True, timeout=300,
                            env={**os.environ, **fake_hub_env(record)})
    assert result.returncode == 0, result.stderr[-3000:]
    with open(record / "calls.jsonl") as f:
        calls = [json.loads(line) for line in f]
    space_id = f"{REPO_ID}-demo"
    assert [(c["call"], c["repo_id"], c["repo_type"]) for c in calls] == [
        ("create_repo", REPO_ID, None), ("create_repo", space_id, "space"), ("upload_folder", REPO_ID, None),
        ("upload_folder", space_id, "space")]
    assert calls[1]["space_sdk"] == "gradio" and calls[1]["exist_ok"]
    assert f"https://huggingface.co/spaces/{space_id}" in result.stdout

    space = record / "spaces" / space_id
    assert files_under(space) == {"README.md", "requirements.txt", "app.py", "utils/__init__.py", "utils/cli.py",
                                  "utils/grid.py", "utils/labels.py", "utils/model/__init__.py",
                                  "utils/model/conditions.py", "utils/model/pipeline.py"}
    for name in files_under(space) - {"README.md", "requirements.txt"}:
        assert (space / name).read_bytes() == open(os.path.join(REPO, name), "rb").read(), name
    from huggingface_hub import SpaceCard

    meta = SpaceCard.load(space / "README.md").data
    assert (meta.sdk, meta.app_file, meta.models) == ("gradio", "app.py", [REPO_ID]) and meta.sdk_version
    requirements = (space / "requirements.txt").read_text().split()
    assert {r.split(">=")[0] for r in requirements} >= {"torch", "diffusers", "safetensors", "huggingface_hub"}
    card = (record / REPO_ID / "README.md").read_text(encoding="utf-8")
    assert f"[https://huggingface.co/spaces/{space_id}](https://huggingface.co/spaces/{space_id})" in card

    # The Space's files alone run the app on the model by repo id (from the cache here; from the Hub there).
    check = ("import sys; sys.path.insert(0, '.'); import app\n"
             "args = app.parse_args([]); pipe = app.load_pipeline_or_exit(args.model)\n"
             "faces = app.make_generate(pipe, 4)('20-29', 'Female', 'any', 2, 0, 2.0, 3)\n"
             f"mine = [m.__file__ for m in list(sys.modules.values()) if (getattr(m, '__file__', None) or '').startswith({REPO!r})]\n"
             "assert not mine, mine\n"
             "print(args.model, args.host, len(faces), faces[0][1])\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    ran = subprocess.run([sys.executable, "-I", "-c", check], cwd=space, capture_output=True, text=True, timeout=300,
                         env={**env, **hub_cache, "SPACE_ID": space_id, "GRADIO_SERVER_NAME": "0.0.0.0"})
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert ran.stdout.split()[:3] == [REPO_ID, "0.0.0.0", "2"] and "20-29 Female any race, seed 0" in ran.stdout


# ---------------------------------------------------------------------------------------------- failures, later pushes
@pytest.fixture
def hub_module(monkeypatch):
    """utils.hub.uploads with a fresh upload state and the network boundary replaced in-process (recorded in ``sent``)."""
    import huggingface_hub
    from utils.hub import uploads

    monkeypatch.setattr(uploads, "_uploads", uploads._Uploads())
    state = SimpleNamespace(sent=[], fail=set())

    def create_repo(repo_id, **kwargs):
        if "create_repo" in state.fail:
            raise ConnectionError("network unreachable")
        return huggingface_hub.RepoUrl(f"https://huggingface.co/{repo_id}")

    def upload_folder(**kwargs):
        future = Future()
        if "snapshots" in state.fail and kwargs.get("run_as_future"):
            future.set_exception(ConnectionError("connection reset"))
            return future
        if "release" in state.fail and not kwargs.get("run_as_future"):
            raise ConnectionError("connection reset")
        state.sent.append(kwargs)
        future.set_result(None)
        return future if kwargs.get("run_as_future") else None

    monkeypatch.setattr(huggingface_hub, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub, "upload_folder", upload_folder)
    return SimpleNamespace(uploads=uploads, state=state)


@pytest.mark.e2e
def test_failed_uploads_warn_or_say_how_to_retry(pushed_run, hub_module, tmp_path, caplog):
    uploads, state = hub_module.uploads, hub_module.state
    run = copy_run(pushed_run.output_dir, tmp_path / "run")
    args = argparse.Namespace(output_dir=str(run), hub_model_id=REPO_ID, hub_private_repo=False, push_to_hub=True,
                              hub_push_snapshots=True)

    state.fail = {"create_repo"}  # a snapshot that cannot even start: a warning, training goes on
    assert uploads.push_snapshot(args, os.path.join(run, "epoch_1")) is None
    assert "could not upload snapshot epoch_1" in caplog.text and "network unreachable" in caplog.text

    state.fail = {"snapshots"}  # a background upload that fails: a warning; the release still goes up
    caplog.clear()
    assert uploads.push_snapshot(args, os.path.join(run, "epoch_1")) is not None
    assert uploads.push_release(args) == f"https://huggingface.co/{REPO_ID}"
    assert [s.get("path_in_repo") for s in state.sent] == [None]
    assert "snapshot upload(s) failed: epoch_1" in caplog.text and "--hub_push_snapshots" in caplog.text

    state.fail = {"release"}  # the release itself: one line with the command that retries it
    with pytest.raises(uploads.PushError) as error:
        uploads.push_release(args)
    message = str(error.value)
    assert "connection reset" in message and f"python -m utils.hub {run} --hub_model_id {REPO_ID}" in message
    assert "\n" not in message and os.path.isfile(os.path.join(run, "unet", "diffusion_pytorch_model.safetensors"))


def test_check_push_access(hub_module, monkeypatch, tmp_path):
    uploads = hub_module.uploads
    args = argparse.Namespace(output_dir=str(tmp_path / "my run"), hub_model_id=None)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    with pytest.raises(uploads.PushError, match="--hub_model_id"):
        uploads.check_push_access(args)  # "my run" is no repo name
    args.hub_model_id = REPO_ID
    uploads.check_push_access(args)
    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(uploads.PushError, match="hf auth login"):
        uploads.check_push_access(args)


@pytest.mark.e2e
def test_push_a_finished_run_later_from_the_command_line(pushed_run, tmp_path):
    run = copy_run(pushed_run.output_dir, tmp_path / "my-faces")
    record = tmp_path / "record"
    result = subprocess.run([sys.executable, "-m", "utils.hub", str(run), "--hub_private_repo", "--hub_push_snapshots"],
                            cwd=REPO, capture_output=True, text=True, timeout=300,
                            env={**os.environ, **fake_hub_env(record)})
    assert result.returncode == 0, result.stderr[-3000:]
    with open(record / "calls.jsonl") as f:
        calls = [json.loads(line) for line in f]
    assert [(c["repo_id"], c["private"]) for c in calls if c["call"] == "create_repo"] == [("my-faces", True)]
    uploaded = record / "fake-user" / "my-faces"  # no --hub_model_id: the logged-in account, the folder's name
    assert {n.split("/")[0] for n in files_under(uploaded)} >= {"epoch_1", "epoch_2", "unet", "README.md"}
    card = (uploaded / "README.md").read_text(encoding="utf-8")
    assert "hf download fake-user/my-faces" in card and REPO_ID not in card  # the card names the repo it is in
    assert "https://huggingface.co/fake-user/my-faces" in result.stdout and TOKEN not in result.stdout + result.stderr

    # A failed push: exit status 2 and one line that says how to retry (train_fairface.py reports the same
    # PushError, a atomic_files.SaveError, the same way after training).
    failed = subprocess.run([sys.executable, "-m", "utils.hub", str(run), "--hub_model_id", REPO_ID], cwd=REPO,
                            capture_output=True, text=True, timeout=300,
                            env={**os.environ, **fake_hub_env(tmp_path / "record2", FAKE_HUB_FAIL="upload_folder")})
    assert failed.returncode == 2 and "Traceback" not in failed.stderr
    assert f"retry with: python -m utils.hub {run} --hub_model_id {REPO_ID}" in failed.stderr.strip().splitlines()[-1]
    from utils.files import atomic_files
    from utils.hub import uploads

    assert issubclass(uploads.PushError, atomic_files.SaveError)


@pytest.mark.e2e
def test_hub_space_id_names_the_space(pushed_run, hub_module, tmp_path):
    """``python -m utils.hub RUN --space --hub_space_id user/name``: the Space goes there, the card links it."""
    from utils.hub.__main__ import main, parse_args

    run = copy_run(pushed_run.output_dir, tmp_path / "run")
    main(parse_args([str(run), "--hub_model_id", REPO_ID, "--space", "--hub_space_id", "fake-user/faces-app"]))
    sent = [(call["repo_id"], call.get("repo_type")) for call in hub_module.state.sent]
    assert sent == [(REPO_ID, None), ("fake-user/faces-app", "space")]
    card = open(os.path.join(run, "README.md"), encoding="utf-8").read()
    assert "https://huggingface.co/spaces/fake-user/faces-app" in card
