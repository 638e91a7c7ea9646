"""generate_dataset.py's provenance and processes (review of issue 19): weight files a user can check with
``sha256sum``, reruns refused for what changed (never "the weights" for a dtype or a device), no local path in the
card in any flag form, the demo model's own reader by default, ``--device cuda:1`` honoured, and a process that
fails ending the whole run at once (``--ddp_timeout`` on the process group)."""

import os
import shutil
import subprocess

import pytest
import torch

from conftest import parse_error, run_script
from test_generate_dataset import COMMON, ONE_THREAD, load


# ---------------------------------------------------------------------------------------------- in process
def test_device_of_a_process():
    from utils.datasets.dataset_processes import process_device

    cuda, cuda0, cuda3, cpu = (torch.device(d) for d in ("cuda", "cuda:0", "cuda:3", "cpu"))
    assert process_device("cuda:1", cuda, 1) == torch.device("cuda:1")  # one process: the GPU asked for
    assert process_device("cuda:1", cuda0, 1) == torch.device("cuda:1")
    assert process_device("cuda", cuda, 1) == cuda and process_device("cpu", cpu, 1) == cpu
    assert process_device("cuda", cuda3, 4) == cuda3  # several: the launcher's cuda:LOCAL_RANK each
    assert process_device("cpu", cpu, 2) == cpu
    with pytest.raises(ValueError, match=r"--device cuda:1: 2 processes draw on one cuda device each"):
        process_device("cuda:1", cuda0, 2)  # not every process on GPU 1


def test_ddp_timeout_flag():
    import generate_dataset

    assert generate_dataset.parse_args(["--device", "cpu"]).ddp_timeout == 7200
    assert generate_dataset.parse_args(["--device", "cpu", "--ddp_timeout", "90"]).ddp_timeout == 90
    status, stderr = parse_error("generate_dataset.py", "--device", "cpu", "--ddp_timeout", "0")
    assert status == 2 and "--ddp_timeout" in stderr and "positive integer" in stderr


def test_rerun_refusal_names_what_changed():
    from utils.datasets.dataset_plan import check_record

    files = {"unet/diffusion_pytorch_model.safetensors": "a" * 64,
             "condition_encoder/diffusion_pytorch_model.safetensors": "c" * 64}
    recorded = {"seed": 0, "dtype": "float16", "devices": ["cuda"], "model_revision": "1" * 40, "model_files": files}
    same = dict(recorded, devices=["cpu"], model_revision="2" * 40)
    assert check_record(recorded, same, "out") is None  # another device or Hub commit, the same weight files
    refusal = check_record(recorded, dict(same, dtype="float32"), "out")  # a GPU's default dtype, now a CPU's
    assert "--dtype float16, now float32" in refusal and "weights" not in refusal
    changed = dict(files, **{"unet/diffusion_pytorch_model.safetensors": "b" * 64})
    refusal = check_record(recorded, dict(same, model_files=changed), "out")
    assert "unet/diffusion_pytorch_model.safetensors sha256 aaaaaaaaaaaa..., now bbbbbbbbbbbb..." in refusal
    assert "condition_encoder" not in refusal and "\n" not in refusal
    assert check_record(dict(recorded, dtype=None), dict(same, dtype="float32"), "out") is None  # older record


def test_card_command_holds_no_local_path_in_either_flag_form(tmp_path):
    from utils.datasets.dataset_card import public_command

    model, out = tmp_path / "fairface-demo", tmp_path / "synthetic"
    model.mkdir()
    command = public_command([f"--model={model}", "--output_dir", str(out), "--classifier=/home/someone/clip-vit",
                              "--age_classifier", "nateraw/vit-age-classifier", "--seed=3", "--guidance_interval=0"])
    assert command == ("generate_dataset.py --model=fairface-demo --output_dir synthetic --classifier=clip-vit "
                       "--age_classifier nateraw/vit-age-classifier --seed=3 --guidance_interval=0")


def test_push_pattern_is_the_plan_shard_names():
    from fnmatch import fnmatchcase

    from utils.datasets.dataset_plan import Plan
    from utils.hub.uploads import DATASET_SHARDS

    plan = Plan([0], [25], None, seed=0, shard_size=10)
    names = [os.path.relpath(plan.shard_path("out", k), "out").replace(os.sep, "/") for k in range(plan.num_shards)]
    assert names[-1] == "data/train-00002-of-00003.parquet" and all(fnmatchcase(n, DATASET_SHARDS) for n in names)
    for other in ("data/test-00000-of-00001.parquet", "data/train-00000-of-00001-3f2a.parquet", "data/notes.md",
                  "data/sub/train-00000-of-00001.parquet", "train-00000-of-00001.parquet"):
        assert not fnmatchcase(other, DATASET_SHARDS), other


# ---------------------------------------------------------------------------------------------- scripts
@pytest.mark.e2e
def test_demo_model_verifies_with_its_reader_and_the_card_is_checkable(
        tiny_run, demo_dataset, tiny_models, tmp_path):
    """The tiny run is trained on demo data (its card says so): --verify without --classifier reads its faces
    with the demo reader, offline (no CLIP from the Hub); the card's weight lines pass `sha256sum -c` in the model
    folder, name the demo data as what the model learned from and hold no local path in any flag form; a rerun in
    another dtype is refused naming the dtype, not the weights."""
    from huggingface_hub import DatasetCard

    folder = tmp_path / "verified"
    args = [f"--model={tiny_run}", "--output_dir", folder, *COMMON, "--verify",
            f"--gender_classifier={tiny_models['gender_vit']}", f"--dataset_name={demo_dataset}"]
    result = run_script("generate_dataset.py", *args, env=ONE_THREAD)
    assert "verifying with --classifier demo: the card of tiny says it was trained on synthetic demo data" in \
        result.stdout
    ds = load(folder)
    assert len(ds) == 12 and {"p_age", "p_gender", "p_race", "verified"} <= set(ds.features)
    card = DatasetCard.load(folder / "README.md")
    assert "source_datasets" not in card.data.to_dict() and card.data.license == "mit"
    assert "trained on synthetic demo data" in card.text and "HuggingFaceM4/FairFace`" not in card.text.split(
        "## Provenance")[1]
    assert "Verification: classifier `demo`, gender `gender_vit`." in card.text
    for local in (str(tmp_path), os.path.dirname(tiny_run), os.path.dirname(demo_dataset), "/tmp"):
        assert local not in card.content, local
    assert "--model=tiny " in card.text and "--dataset_name=fairface" in card.text
    lines = card.text.split("```text\n")[1].split("```")[0]
    assert [line.split("  ")[1] for line in lines.splitlines()] == [
        "unet/diffusion_pytorch_model.safetensors", "condition_encoder/diffusion_pytorch_model.safetensors"]
    if shutil.which("sha256sum"):  # the check the card tells its readers to run
        check = subprocess.run(["sha256sum", "-c", "-"], input=lines, cwd=tiny_run, capture_output=True, text=True)
        assert check.returncode == 0 and check.stdout.count(": OK") == 2, check.stdout + check.stderr

    refused = run_script("generate_dataset.py", *args, "--dtype", "bfloat16", check=False, env=ONE_THREAD)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr
    refusal = refused.stderr.strip().splitlines()[-1]  # (above it: the gender ViT's loading bar)
    assert "was generated with --dtype float32, now bfloat16: rerun it with the recorded value" in refusal
    assert "weights" not in refusal


@pytest.mark.e2e
def test_sampler_settings_the_model_cannot_take_are_one_line(tiny_run, tmp_path):
    result = run_script("generate_dataset.py", "--model", tiny_run, "--output_dir", tmp_path / "out", "--conditions",
                        "0", "--device", "cpu", "--num_inference_steps", "5000", check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "num_inference_steps must be 1-1000, got 5000" in result.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "out").exists()


# A process that fails (its shard meets a full disk) ends every process of the run with one line, and the slow
# process's wait ends at --ddp_timeout: tests/test_promises.py, the generate_dataset row.
