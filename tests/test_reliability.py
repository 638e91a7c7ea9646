"""Reliability (issue 6): broken data, non-finite losses, no pickle, and operational errors -- each one either
handled or a one-line error (exit 2, no traceback) that leaves every earlier output intact.

Scripts run as a user runs them (subprocess); the data is 146 synthetic faces plus the 14 odd records of
``make_demo_dataset(broken_images=True)``: 160 records, so one epoch at 16 per step sees each record once.
"""

import io
import os
import re
import shutil
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from conftest import TINY_MODEL_ARGS, run_script
from test_resume import SMALL, assert_bitwise_equal, malicious_pickle, weights
from utils.run import checkpoints
from utils.data import fairface, pixel_cache
from utils.data.demo_data import BROKEN_RECORDS_SKIPPED, ODD_RECORDS_CONVERTIBLE, _odd_records, make_demo_dataset

FAST = [*TINY_MODEL_ARGS, *SMALL, "--train_batch_size", "16", "--learning_rate", "1e-3", "--use_ema",
        "--save_model_epochs", "100", "--save_images_epochs", "100", "--num_inference_steps", "2"]
ENV = {"OMP_NUM_THREADS": "1"}


def train(*args, check=True, env=None):
    return run_script("train_fairface.py", *FAST, *args, check=check, env={**ENV, **(env or {})})


def assert_one_line_error(result, *fragments):
    """Exit 2 and ``train_fairface.py: error: ...`` as the last line of stderr, no traceback."""
    assert result.returncode == 2, f"exit {result.returncode}\n{result.stderr[-4000:]}"
    assert "Traceback" not in result.stderr, result.stderr[-4000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("train_fairface.py: error: "), result.stderr[-4000:]
    for fragment in fragments:
        assert fragment in last, last
    return last


@pytest.fixture(scope="session")
def broken_data(tmp_path_factory):
    return make_demo_dataset(str(tmp_path_factory.mktemp("broken-data") / "fairface"), num_images=146,
                             resolution=32, broken_images=True)


# ------------------------------------------------------------------------------------------- broken data
def test_odd_records_decode_to_rgb_and_broken_ones_to_none():
    records = _odd_records(np.random.default_rng(0), 32)
    bad, odd = records[:BROKEN_RECORDS_SKIPPED], records[BROKEN_RECORDS_SKIPPED:]
    assert len(odd) == ODD_RECORDS_CONVERTIBLE
    for record, name in bad:
        assert fairface.decode_image(record, 32) is None, name
    decoded = {}
    for record, name in odd:
        pixels = fairface.decode_image(record, 32)
        assert pixels is not None, name
        assert pixels.shape == (32, 32, 3) and pixels.dtype == np.uint8, name
        decoded[name] = pixels.astype(int)
    grey = decoded["L png"]
    assert np.abs(decoded["I;16 png"] - grey).max() <= 1  # 16-bit rescaled, not clipped to white
    assert np.abs(decoded["LA png"] - grey).max() <= 1
    assert set(np.unique(decoded["1-bit png"])) <= {0, 255}
    assert np.abs(decoded["CMYK jpeg"] - decoded["RGBA png"]).mean() < 12  # colours survive CMYK
    assert (decoded["P with transparency png"][0, 0] == 255).all()  # transparent background -> white
    assert not (decoded["RGBA png"][0, 0] == 255).all()  # opaque RGBA keeps its background


def _png_header_only(width, height):
    """A PNG that claims width x height (8-bit grey) but holds almost no data: a decompression bomb's header."""
    def chunk(kind, payload):
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


def test_decompression_bomb_guard():
    for side in (5000, 20000, 100000):  # over our 4096*4096 cap; 20000+ also over PIL's own bomb limit
        assert fairface.decode_image({"bytes": _png_header_only(side, side), "path": None}, 32) is None
    buffer = io.BytesIO()
    Image.new("L", (4100, 4100), 200).save(buffer, "PNG")  # a whole, decodable image just over the cap: refused
    assert fairface.decode_image({"bytes": buffer.getvalue(), "path": None}, 32) is None
    buffer = io.BytesIO()
    Image.new("L", (4096, 4096), 200).save(buffer, "PNG")  # exactly at the cap: still decoded
    pixels = fairface.decode_image({"bytes": buffer.getvalue(), "path": None}, 32)
    assert pixels is not None and (pixels == 200).all()


@pytest.mark.e2e
@pytest.mark.parametrize("cache", [False, True], ids=["decode-in-worker", "pixel-cache"])
def test_broken_images_are_skipped_and_counted(broken_data, cache, tmp_path):
    extra = ["--preprocess_cache", tmp_path / "cache"] if cache else ["--dataloader_num_workers", "1"]
    result = train("--dataset_name", broken_data, "--output_dir", tmp_path / "out", "--num_epochs", "1",
                   "--checkpointing_steps", "1000", *extra)
    log = result.stdout + result.stderr
    assert "160 images" in log and "done: 10 steps" in log and "Traceback" not in log
    reports = re.findall(r"epoch \d+: skipped \d+ unusable images", log)
    assert reports == [f"epoch 1: skipped {BROKEN_RECORDS_SKIPPED} unusable images"], f"{reports}\n{log[-5000:]}"
    assert os.path.isfile(tmp_path / "out" / "model_index.json")
    if cache:
        (folder,) = os.listdir(tmp_path / "cache")
        meta = pixel_cache.load_pixel_cache(str(tmp_path / "cache" / folder))["meta"]
        assert meta["count"] == 160 and meta["skipped"] == BROKEN_RECORDS_SKIPPED


@pytest.mark.e2e
def test_labels_out_of_range_are_refused_before_training(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = make_demo_dataset(str(tmp_path / "data"), num_images=16, resolution=32)
    path = os.path.join(folder, "1.25", "validation-00000-of-00001.parquet")
    table = pq.read_table(path)  # keeps the schema metadata (ClassLabel names); only one value changes
    ages = table.column("age").to_pylist()
    ages[0] = 11  # there are 9 age groups
    column = table.schema.get_field_index("age")
    pq.write_table(table.set_column(column, table.schema.field("age"), pa.array(ages, pa.int64())), path)
    result = train("--dataset_name", folder, "--output_dir", tmp_path / "out", "--max_train_steps", "2",
                   check=False)
    assert_one_line_error(result, "age labels outside 0-8")
    assert not [n for n in os.listdir(tmp_path / "out") if n.startswith(("checkpoint", ".tmp"))]


# ------------------------------------------------------------------------------------------- non-finite loss
@pytest.fixture(scope="module")
def nan_once(broken_data, tmp_path_factory):
    """5 steps, step 3's loss made NaN by the hidden --inject_nonfinite_steps hook; a checkpoint every step."""
    out = tmp_path_factory.mktemp("nan-once") / "run"
    result = train("--dataset_name", broken_data, "--output_dir", out, "--max_train_steps", "5",
                   "--checkpointing_steps", "1", "--inject_nonfinite_steps", "3")
    return str(out), result.stdout + result.stderr


@pytest.mark.e2e
def test_isolated_nonfinite_step_is_skipped(nan_once):
    out, log = nan_once
    assert "step 3: non-finite loss/gradient, update skipped (1 in a row)" in log
    assert "non-finite" not in log.replace("step 3: non-finite", "")  # only that step
    assert "done: 5 steps" in log
    # Step 3 changed nothing (weights, EMA); steps 2 and 4 did.
    assert_bitwise_equal(weights(f"{out}/checkpoint-2"), weights(f"{out}/checkpoint-3"))
    for before, after in ((1, 2), (3, 4)):
        a, b = weights(f"{out}/checkpoint-{before}"), weights(f"{out}/checkpoint-{after}")
        assert any(not np.array_equal(a[k].numpy(), b[k].numpy()) for k in a if k.startswith("unet_ema/"))
    states = [checkpoints.read_training_state(f"{out}/checkpoint-{s}")["nonfinite_in_a_row"] for s in range(1, 6)]
    assert states == [0, 0, 1, 0, 0]


@pytest.mark.e2e
def test_isolated_nonfinite_step_leaves_the_lr_schedule_alone(nan_once):
    """The LR schedule follows the optimizer steps taken: the skipped step 3 did not advance it (README)."""
    import torch

    def schedule(step):  # our own checkpoint's LR-scheduler state: plain numbers, loaded without unpickling code
        return torch.load(f"{out}/checkpoint-{step}/custom_checkpoint_0.pkl", weights_only=True)["last_epoch"]

    def lr(step):
        return torch.load(f"{out}/checkpoint-{step}/optimizer.bin", weights_only=True)["param_groups"][0]["lr"]

    out = nan_once[0]
    assert [schedule(s) for s in range(1, 6)] == [1, 2, 2, 3, 4]
    assert lr(3) == lr(2) and lr(4) != lr(3)


@pytest.mark.e2e
def test_skipped_images_after_a_mid_epoch_resume_cover_the_whole_epoch(broken_data, tmp_path):
    """A run stopped after 5 of the epoch's 10 steps, resumed: the epoch's report counts all its skipped images,
    the ones before the resume too (carried in the checkpoint)."""
    args = ["--dataset_name", broken_data, "--output_dir", tmp_path / "out", "--checkpointing_steps", "1000",
            "--resume_from_checkpoint", "latest"]
    first = train(*args, "--max_train_steps", "5")
    before = int(re.search(r"epoch 1: skipped (\d+) unusable images", first.stderr + first.stdout).group(1))
    assert 0 < before < BROKEN_RECORDS_SKIPPED  # the 5 steps saw some of the broken records, not all
    log = (lambda r: r.stdout + r.stderr)(train(*args, "--max_train_steps", "10"))
    assert "resumed from" in log and "at step 5" in log
    assert re.findall(r"epoch \d+: skipped \d+ unusable images", log) == [
        f"epoch 1: skipped {BROKEN_RECORDS_SKIPPED} unusable images"], log[-3000:]


@pytest.mark.e2e
def test_nonfinite_streak_stops_after_a_checkpoint(broken_data, tmp_path):
    out = tmp_path / "run"
    result = train("--dataset_name", broken_data, "--output_dir", out, "--max_train_steps", "8",
                   "--checkpointing_steps", "1", "--inject_nonfinite_steps", "2", "3", "4",
                   "--max_nonfinite_steps", "3", check=False)
    last = assert_one_line_error(result, "3 non-finite steps in a row; stopped", f"{out}/checkpoint-4")
    assert "--learning_rate" in last
    assert checkpoints.read_training_state(out / "checkpoint-4")["nonfinite_in_a_row"] == 3
    assert_bitwise_equal(weights(out / "checkpoint-1"), weights(out / "checkpoint-4"))  # 2-4 were skipped
    assert not os.path.exists(out / "checkpoint-5") and not os.path.exists(out / "model_index.json")


# ------------------------------------------------------------------------------------------- no pickle
def _pickle_only_copy(pipeline_dir, target, marker):
    """The pipeline's configs, with each model's weights as a malicious .bin instead of safetensors."""
    shutil.copytree(pipeline_dir, target, ignore=shutil.ignore_patterns("*.safetensors", "checkpoint-*", "epoch_*",
                                                                       "logs", "*.png"))
    for sub in ("unet", "condition_encoder"):
        malicious_pickle(os.path.join(target, sub, "diffusion_pytorch_model.bin"), str(marker))
    return str(target)


@pytest.mark.e2e
def test_pickle_only_model_folder_is_refused(nan_once, tmp_path):
    from utils.model.pipeline import load_pipeline

    marker = tmp_path / "UNPICKLED"
    folder = _pickle_only_copy(nan_once[0], tmp_path / "pickled", marker)
    with pytest.raises(ValueError, match="only pickled weights"):
        load_pipeline(folder)
    assert not marker.exists()


@pytest.mark.e2e
def test_safetensors_are_used_and_a_bin_beside_them_is_never_unpickled(nan_once, tmp_path):
    from utils.model.pipeline import load_pipeline

    marker = tmp_path / "UNPICKLED"
    folder = shutil.copytree(nan_once[0], tmp_path / "both", ignore=shutil.ignore_patterns("checkpoint-*"))
    for sub in ("unet", "condition_encoder"):
        malicious_pickle(os.path.join(folder, sub, "diffusion_pytorch_model.bin"), str(marker))
    pipe = load_pipeline(str(folder))
    assert not marker.exists()
    expected = weights(nan_once[0], ("unet",))
    loaded = pipe.unet.state_dict()
    assert all(np.array_equal(loaded[k.split("/", 1)[1]].numpy(), v.numpy()) for k, v in expected.items())


@pytest.mark.e2e
def test_sample_script_refuses_pickle_only_model(nan_once, tmp_path):
    marker = tmp_path / "UNPICKLED"
    folder = _pickle_only_copy(nan_once[0], tmp_path / "pickled", marker)
    result = run_script("sample_fairface.py", "--model", folder, "--condition", "0", "--num_images", "1",
                        "--output_dir", tmp_path / "samples", check=False, env=ENV)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "pickle" in result.stderr.strip().splitlines()[-1]
    assert not marker.exists() and not os.path.exists(tmp_path / "samples")


# ------------------------------------------------------------------------------------------- operational errors
@pytest.fixture(scope="module")
def disk_full(broken_data, tmp_path_factory):
    """checkpoint-6 and the epoch_1 snapshot written, then the disk is 'full' while checkpoint-12 is written
    (hidden test hook)."""
    out = tmp_path_factory.mktemp("disk-full") / "run"
    result = train("--dataset_name", broken_data, "--output_dir", out, "--max_train_steps", "15",
                   "--checkpointing_steps", "6", "--save_model_epochs", "1", check=False,
                   env={"FAIRFACE_TEST_SAVE_FAULT": "12:enospc"})
    return str(out), result


def assert_earlier_outputs_intact(out):
    """checkpoint-6 is the only checkpoint, complete, `latest`; the epoch_1 snapshot loads. Returns the weights."""
    from utils.model.pipeline import load_pipeline

    assert sorted(n for n in os.listdir(out) if "checkpoint" in n) == ["checkpoint-6"]
    assert checkpoints.resolve_checkpoint(out, "latest") == os.path.join(out, "checkpoint-6")
    assert checkpoints.read_training_state(os.path.join(out, "checkpoint-6"))["global_step"] == 6
    assert load_pipeline(os.path.join(out, "epoch_1")).unet.config.sample_size == 32
    assert not [n for n in os.listdir(out) if n.startswith(".") and n != ".run-lock"], "temporary folders left behind"
    return {**weights(os.path.join(out, "checkpoint-6")), **weights(os.path.join(out, "epoch_1"), ("unet",))}


@pytest.mark.e2e
def test_disk_full_during_save_is_a_one_line_error(disk_full):
    out, result = disk_full
    assert_one_line_error(result, f"could not write checkpoint {out}/checkpoint-12: No space left on device",
                          "--resume_from_checkpoint latest")
    assert_earlier_outputs_intact(out)  # and no half-written checkpoint-12 or .tmp-checkpoint-12
    assert not os.path.exists(os.path.join(out, "model_index.json"))


@pytest.mark.e2e
@pytest.mark.parametrize("case", ["bad checkpoint path", "pickled checkpoint", "other model"])
def test_errors_keep_earlier_outputs(case, broken_data, disk_full, tmp_path):
    out = disk_full[0]
    before = assert_earlier_outputs_intact(out)
    args = ["--dataset_name", broken_data, "--output_dir", out, "--max_train_steps", "15",
            "--resume_from_checkpoint", "latest"]
    marker = tmp_path / "UNPICKLED"
    if case == "bad checkpoint path":
        args[-1], expected = tmp_path / "checkpoint-6", "is not a complete checkpoint"
    elif case == "pickled checkpoint":  # UNet and its EMA only as .bin: refused, never unpickled
        copy = shutil.copytree(os.path.join(out, "checkpoint-6"), tmp_path / "checkpoint-6")
        for sub in ("unet", "unet_ema"):
            os.remove(copy / sub / "diffusion_pytorch_model.safetensors")
            malicious_pickle(str(copy / sub / "diffusion_pytorch_model.bin"), str(marker))
        args[-1], expected = copy, f"cannot resume from {copy}"
    else:  # resuming with another architecture than the checkpoint's
        args += ["--cross_attention_dim", "32"]
        expected = "cannot resume from"
    assert_one_line_error(train(*args, check=False), expected)
    assert not marker.exists()
    assert_bitwise_equal(before, assert_earlier_outputs_intact(out))


@pytest.mark.e2e
def test_output_folder_that_cannot_be_created(broken_data, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")  # as root, chmod does not stop writes; a path under a file always fails
    result = train("--dataset_name", broken_data, "--output_dir", blocker / "run", check=False)
    assert_one_line_error(result, f"output folder '{blocker / 'run'}' is not writable")
    assert blocker.read_text() == "not a folder"


def test_local_dataset_folders_are_never_served_stale_from_the_cache(tmp_path):
    """datasets caches a local folder's README configs by folder name and config alone: a second folder of the
    same name, or the same folder regenerated, must still give its own data (and its own pixel-cache key)."""
    first = make_demo_dataset(str(tmp_path / "a" / "fairface"), num_images=16, resolution=32)
    other = make_demo_dataset(str(tmp_path / "b" / "fairface"), num_images=24, resolution=32, broken_images=True)
    loaded = fairface.load_fairface(first)
    assert len(loaded) == 16
    assert len(fairface.load_fairface(other)) == 24 + BROKEN_RECORDS_SKIPPED + ODD_RECORDS_CONVERTIBLE
    make_demo_dataset(first, num_images=32, resolution=32, seed=1)  # regenerated in place
    reloaded = fairface.load_fairface(first)
    assert len(reloaded) == 32
    assert pixel_cache.cache_key(reloaded, 32) != pixel_cache.cache_key(loaded, 32)
