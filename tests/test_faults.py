"""Faults (issue 14): kill -9 at any moment, two runs on one folder, a changed command line, bad flags.

The SIGKILL storms kill a run again and again (seeded, so a failure reproduces) and restart it each time with
``--resume_from_checkpoint latest``: at random moments during the steps, and through the test hook
``FAIRFACE_TEST_SAVE_FAULT=WHERE:kill`` (utils/files/faults.py ``fault_hook``) inside the pixel-cache build, a
checkpoint save, a snapshot write and both halves of the final release. Each run ends bitwise equal to an
uninterrupted one, each restart resumes from the newest complete checkpoint (so at most --checkpointing_steps
steps are redone per kill) and tidies up what the killed run left.
"""

import glob
import importlib.util
import json
import os
import random
import re
import shutil
import signal
import time

import pytest

from conftest import TINY_MODEL_ARGS, parse_error, run_script
from test_reliability import assert_one_line_error
from test_resume import SMALL, assert_bitwise_equal, finish, launch, run, wait_for, weights
from utils.files import atomic_files
from utils.run import checkpoints, resume_check
from utils.hub.release import PENDING

C = 3  # --checkpointing_steps
STEPS = 30  # 3 epochs of 10 steps (160 images, 16 per step)
BASE = [*TINY_MODEL_ARGS, *SMALL, "--learning_rate", "1e-3", "--use_ema", "--random_flip", "--checkpointing_steps",
        str(C), "--checkpoints_total_limit", "2", "--save_model_epochs", "1", "--save_images_epochs", "100",
        "--num_inference_steps", "2", "--resume_from_checkpoint", "latest"]
ONE = [*BASE, "--train_batch_size", "16", "--max_train_steps", str(STEPS)]
TWO = [*BASE, "--train_batch_size", "8", "--max_train_steps", "20"]  # 2 processes x 8 images
KEPT_HIDDEN = {".run-lock", ".release-files.json"}  # the only dot-names a finished run leaves


# ------------------------------------------------------------------------------------------------ helpers
def args_for(data, out, cache, common):
    return ["--dataset_name", data, "--output_dir", out, "--preprocess_cache", cache, *common]


def leftovers(folder):
    return sorted(name for name in os.listdir(folder) if name.startswith(".") and name not in KEPT_HIDDEN)


def progress_seen(log):
    """The last step the progress bar showed (a lower bound of the steps the run had done)."""
    steps = re.findall(r"training:[^|]*\|[^|]*\|\s*(\d+)/\d+", log)
    return int(steps[-1]) if steps else 0


def latest_step(out):
    latest = checkpoints.resolve_checkpoint(out, "latest")
    return checkpoints.read_training_state(latest)["global_step"] if latest else 0


def workers(torchrun_pid):
    """{rank: pid} of torchrun's worker processes."""
    found = {}
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            with open(stat) as f:
                parent = int(f.read().rsplit(")", 1)[1].split()[1])
            if parent != torchrun_pid:
                continue
            pid = int(stat.split("/")[2])
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = dict(item.split(b"=", 1) for item in f.read().split(b"\0") if b"=" in item)
            found[int(env[b"RANK"])] = pid
        except (OSError, ValueError, KeyError, IndexError):
            continue
    return found


def assert_same_outputs(reference, out, steps, epochs):
    """Final checkpoint, release and every epoch snapshot bitwise equal; nothing temporary left."""
    assert_bitwise_equal(weights(f"{reference}/checkpoint-{steps}"), weights(f"{out}/checkpoint-{steps}"))
    for folder in ["", *(f"epoch_{e}" for e in range(1, epochs + 1))]:
        assert_bitwise_equal(weights(os.path.join(reference, folder), ("unet", "condition_encoder")),
                             weights(os.path.join(out, folder), ("unet", "condition_encoder")))
    assert leftovers(out) == [], leftovers(out)


def storm(data, out, cache, common, kills, rng, nproc, tmp_path):
    """Run, killing as ``kills`` says ((kind, where) each), restarting with `latest`; then run to the end."""
    left_behind = []  # what the previous (killed) run left for this one to clean up
    for attempt, (kind, where) in enumerate(kills + [("finish", None)]):
        before = latest_step(out) if os.path.isdir(out) else 0
        if where == "next checkpoint":  # one or two checkpoints after the latest
            where = str(C * (before // C + rng.randint(1, 2)))
        env = {"FAIRFACE_TEST_SAVE_FAULT": f"{where}:kill"} if kind == "hook" else {}
        process = launch(args_for(data, out, cache, common), tmp_path / f"{attempt}.log", env, nproc)
        if kind == "random":  # at a random moment after this run has written a checkpoint of its own
            wait_for(lambda: latest_step(out) > before, process, "a new checkpoint", timeout=400)
            time.sleep(rng.uniform(0.0, 2.5))
            if nproc == 1:
                os.killpg(process.pid, signal.SIGKILL)
            else:  # one rank dies; torchrun then tears the other down
                wait_for(lambda: len(workers(process.pid)) == nproc, process, "the workers")
                os.kill(workers(process.pid)[where], signal.SIGKILL)
        code, log = finish(process)
        if kind == "finish":
            assert code == 0, f"exit {code}\n{log[-6000:]}"
        else:
            assert code != 0, f"the {kind} kill at {where} never happened\n{log[-3000:]}"
        resumed = re.search(r"resumed from (\S+) at step (\d+)", log)
        if where != "pixel-cache":  # (killed before it got to the checkpoint)
            if before == 0:
                assert "no complete checkpoint yet: starting a new run" in log, log[-3000:]
            else:
                assert resumed and int(resumed.group(2)) == before, log[-3000:]  # the newest complete checkpoint
        for name in left_behind:  # what the previous (killed) run left behind was cleaned up by this one
            assert name in log.split("cleaned up after an interrupted run")[1].splitlines()[0], (name, log[-3000:])
        left_behind = [n for n in leftovers(out) if n not in (".old-release", PENDING)] if os.path.isdir(out) else []
        done = max(progress_seen(log), before)
        assert latest_step(out) >= done - C, f"{done - latest_step(out)} steps would be redone"
    assert not [n for n in os.listdir(cache) if ".tmp-" in n], os.listdir(cache)


# ------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def data160(tmp_path_factory):
    from utils.data.demo_data import make_demo_dataset

    return make_demo_dataset(str(tmp_path_factory.mktemp("faults-data") / "fairface"), num_images=160, resolution=32)


@pytest.fixture(scope="module")
def reference(data160, tmp_path_factory):
    """30 steps straight (3 epochs, snapshots after each), one process."""
    root = tmp_path_factory.mktemp("faults-reference")
    out = str(root / "run")
    run(args_for(data160, out, root / "cache", ONE), root / "run.log")
    return out


# ------------------------------------------------------------------------------------------------ kill -9
@pytest.mark.e2e
def test_sigkill_storm_one_process_ends_bitwise_equal(data160, reference, tmp_path):
    """8 kills: in the pixel-cache build, in checkpoint-3's save (no checkpoint yet), at a random moment, in a
    later checkpoint's save, in the epoch_2 snapshot, at a random moment, in the release (twice)."""
    out, cache = str(tmp_path / "run"), str(tmp_path / "cache")
    kills = [("hook", "pixel-cache"), ("hook", str(C)), ("random", 0), ("hook", "next checkpoint"),
             ("hook", "epoch_2"), ("random", 0), ("hook", "release"), ("hook", "release-moves")]
    storm(data160, out, cache, ONE, kills, random.Random(14), 1, tmp_path)
    assert_same_outputs(reference, out, STEPS, 3)


@pytest.mark.e2e
def test_sigkill_storm_two_processes_kills_one_rank(data160, tmp_path):
    root = tmp_path / "reference"
    run(args_for(data160, root / "run", root / "cache", TWO), tmp_path / "reference.log", nproc=2)
    """torchrun, 2 processes: rank 1 killed at a random moment, rank 0 in a checkpoint save, a random rank at a
    random moment, rank 0 in the release; torchrun tears the other rank down each time."""
    rng = random.Random(41)
    out, cache = str(tmp_path / "run"), str(tmp_path / "cache")
    kills = [("random", 1), ("hook", "next checkpoint"), ("random", rng.randint(0, 1)), ("hook", "release-moves")]
    storm(data160, out, cache, TWO, kills, rng, 2, tmp_path)
    assert_same_outputs(str(root / "run"), out, 20, 2)


# ------------------------------------------------------------------------------------------------ release
def release_weights(folder):
    from utils.model.pipeline import load_pipeline

    pipe = load_pipeline(folder)
    return {f"{name}/{key}": tensor for name in ("unet", "condition_encoder")
            for key, tensor in getattr(pipe, name).state_dict().items()}


@pytest.mark.e2e
def test_release_is_never_a_mix_after_a_kill_or_a_full_disk(data160, reference, tmp_path):
    """A finished 30-step run trains on to 33 steps; its new release is killed and starved of disk space in
    both halves: the root always loads as the previous release or the new one, and a rerun finishes it."""
    out = str(tmp_path / "run")
    shutil.copytree(reference, out)
    previous = release_weights(out)
    args = args_for(data160, out, tmp_path / "cache", [*ONE, "--max_train_steps", "33"])

    def attempt(fault, name):
        code, log = finish(launch(args, tmp_path / f"{name}.log", {"FAIRFACE_TEST_SAVE_FAULT": fault}))
        return code, log

    code, _ = attempt("release:kill", "1")  # killed with the new release written but not committed
    assert code == -signal.SIGKILL and os.path.isdir(os.path.join(out, ".tmp-release"))
    assert_bitwise_equal(previous, release_weights(out))
    new = weights(os.path.join(out, "epoch_4"), ("unet", "condition_encoder"))  # the same weights as the release
    assert_bitwise_equal(new, {k: v for k, v in release_weights(os.path.join(out, "epoch_4")).items()})

    code, log = attempt("release:enospc", "2")  # the disk fills while it is written
    assert code == 2 and "could not write the release in" in log.strip().splitlines()[-1]
    assert "No space left on device" in log.strip().splitlines()[-1] and "Traceback" not in log
    assert_bitwise_equal(previous, release_weights(out))
    assert not os.path.exists(os.path.join(out, ".tmp-release"))

    code, _ = attempt("release-moves:kill", "3")  # committed, killed while moving into the root
    assert code == -signal.SIGKILL and os.path.isdir(os.path.join(out, PENDING))
    assert_bitwise_equal(new, release_weights(out))

    code, log = attempt("release-moves:enospc", "4")  # the next start cannot finish it: one line, still new
    last = log.strip().splitlines()[-1]
    assert code == 2 and "could not finish the interrupted release" in last and "Traceback" not in log, log[-3000:]
    assert_bitwise_equal(new, release_weights(out))

    code, log = attempt("", "5")  # a plain rerun finishes it
    assert code == 0, log[-3000:]
    assert not os.path.exists(os.path.join(out, PENDING)) and leftovers(out) == []
    assert_bitwise_equal(new, weights(out, ("unet", "condition_encoder")))  # the files in the root themselves
    with open(os.path.join(out, ".release-files.json")) as f:
        assert set(json.load(f)) >= {"model_index.json", "unet", "condition_encoder", "scheduler", "README.md",
                                     "samples.png"}


# ------------------------------------------------------------------------------------------------ one run per folder
@pytest.mark.e2e
def test_second_run_on_a_live_folder_is_refused_and_the_first_goes_on(data160, reference, tmp_path):
    out, go = str(tmp_path / "run"), tmp_path / "go"
    args = args_for(data160, out, tmp_path / "cache", ONE)
    first = launch(args, tmp_path / "first.log", {"FAIRFACE_TEST_SAVE_FAULT": f"{C}:wait:{go}"})
    try:
        wait_for(lambda: os.path.isdir(os.path.join(out, f".tmp-checkpoint-{C}")), first, "checkpoint-3")
        for nproc in (1, 2):
            code, log = finish(launch(args, tmp_path / f"second-{nproc}.log", nproc=nproc))
            refusal = f"error: {out} is in use by another run (pid {first.pid} on "
            assert code != 0 and log.count(refusal) == nproc, log[-3000:]  # one line from every rank
            if nproc == 1:
                assert code == 2 and log.strip().splitlines()[-1].startswith("train_fairface.py: " + refusal)
        assert first.poll() is None and os.path.isdir(os.path.join(out, f".tmp-checkpoint-{C}")), "first run harmed"
    finally:
        go.touch()
    code, log = finish(first)
    assert code == 0, log[-3000:]
    assert_same_outputs(reference, out, STEPS, 3)


# ------------------------------------------------------------------------------------------------ resume checks
def test_each_recorded_flag_change_is_refused_unless_allowed(tmp_path):
    from train_fairface import parse_args

    base = parse_args(["--dataset_name", str(tmp_path)])
    recorded = resume_check.record(base, 1)
    changes = {"train_batch_size": 8, "num_processes": 2, "gradient_accumulation_steps": 2,
               "dataset_name": "other/data", "dataset_config_names": ["0.25"], "dataset_splits": ["train"],
               "resolution": 64, "seed": 1, "prediction_type": "epsilon", "num_train_timesteps": 500,
               "beta_schedule": "linear", "use_ema": False, "block_out_channels": [32, 64, 128, 256],
               "layers_per_block": 2, "attention_levels": [2], "cross_attention_dim": 256,
               "condition_in_time_embedding": True, "framing_condition": False, "ema_variants": [[0.999, 0.75]],
               "balance_by": "age", "balance_power": 1.0, "balance_with": "loss"}
    assert set(changes) == set(resume_check.DATA_FLAGS + resume_check.MODEL_FLAGS)
    for flag, value in changes.items():
        current = {**recorded, flag: value}
        with pytest.raises(ValueError) as refused:
            resume_check.check({"run": recorded}, current, False, "ckpt")
        old = resume_check._show(flag, recorded[flag])
        assert f"cannot resume from ckpt: it was trained with {old}" in str(refused.value)
        assert resume_check._show(flag, value) in str(refused.value)
        if flag in resume_check.MODEL_FLAGS:  # the weights would not fit: refused even when allowed
            with pytest.raises(ValueError, match="do not fit another architecture|EMA states do not fit"):
                resume_check.check({"run": recorded}, current, True, "ckpt")
        else:
            assert resume_check.check({"run": recorded}, current, True, "ckpt") == [(flag, recorded[flag], value)]
    assert resume_check.check({}, {**recorded, "seed": 5}, False, "ckpt") == []  # an old checkpoint: not checked


def test_checkpoint_from_before_the_framing_flag_is_checked_by_its_encoder(tmp_path, capsys):
    """Checkpoints recorded before --framing_condition existed (or with no record at all): the saved encoder's
    config says whether it has framing rows; resuming it with the other setting is one line, exit 2."""
    from train_fairface import parse_args

    checkpoint = tmp_path / "checkpoint-30"
    (checkpoint / "condition_encoder").mkdir(parents=True)
    (checkpoint / "condition_encoder" / "config.json").write_text('{"embed_dim": 32}')  # no "framings"
    current = resume_check.record(parse_args(["--dataset_name", str(tmp_path)]), 1)  # framing on by default
    for state in ({"global_step": 30}, {"global_step": 30, "run": {k: v for k, v in current.items()
                                                                   if k != "framing_condition"}}):
        atomic_files.write_json_atomic(str(checkpoint / checkpoints.TRAINING_STATE), state)
        with pytest.raises(SystemExit) as exit_info:
            resume_check.check_or_exit(str(checkpoint), current, allow_changes=True)
        assert exit_info.value.code == 2
        assert "--framing_condition False, not --framing_condition True" in capsys.readouterr().err
    assert resume_check.check_or_exit(str(checkpoint), {**current, "framing_condition": False}, False) == []


@pytest.mark.e2e
def test_resume_with_changed_flags_end_to_end(data160, reference, tmp_path):
    out = str(tmp_path / "run")
    shutil.copytree(reference, out)
    common = ["--dataset_name", data160, "--output_dir", out, *ONE]
    for extra, fragment in [(["--train_batch_size", "8"], "it was trained with --train_batch_size 16, now "
                                                          "--train_batch_size 8 (pass --allow_resume_changes"),
                            (["--dataset_splits", "train"], "--dataset_splits train validation, now "
                                                            "--dataset_splits train"),
                            (["--block_out_channels", "32", "64", "--allow_resume_changes"],
                             "--block_out_channels 16 32, not --block_out_channels 32 64")]:
        assert_one_line_error(run_script("train_fairface.py", *common, *extra, check=False), fragment)
    code, log = finish(launch(common, tmp_path / "two.log", nproc=2))  # 2 processes, same batch per process
    assert code != 0 and log.count("it was trained with the process count 1, now the process count 2") == 2

    # Accepted: epoch 3 done at 10 steps per epoch is step 60 at 20 per epoch; on to step 70, recorded.
    log = run([*common, "--train_batch_size", "8", "--max_train_steps", "70", "--allow_resume_changes"],
              tmp_path / "accepted.log")
    assert "resuming with changed flags (--train_batch_size 16 -> --train_batch_size 8)" in log
    assert "step 30 (10 steps per epoch) goes on as step 60 (20 per epoch)" in log
    state = checkpoints.read_training_state(os.path.join(out, "checkpoint-70"))
    assert state["resume_changes"] == [{"step": 60, "flag": "train_batch_size", "old": 16, "new": 8}]
    assert state["run"]["train_batch_size"] == 8 and state["steps_per_epoch"] == 20

    # A checkpoint written before the record existed still resumes, with a warning.
    path = os.path.join(out, "checkpoint-70", checkpoints.TRAINING_STATE)
    old = {k: v for k, v in state.items() if k not in ("run", "steps_per_epoch", "resume_changes")}
    atomic_files.write_json_atomic(path, old)
    log = run([*common, "--train_batch_size", "8", "--max_train_steps", "71"], tmp_path / "old.log")
    assert "written before command lines were recorded: the resume is not checked" in log


# ------------------------------------------------------------------------------------------------ flags
BAD_FLAGS = [
    (["--learning_rate", "-1"], "--learning_rate"), (["--learning_rate", "0"], "--learning_rate"),
    (["--learning_rate", "nan"], "--learning_rate"), (["--adam_beta1", "1"], "--adam_beta1"),
    (["--adam_beta2", "-0.1"], "--adam_beta2"), (["--adam_epsilon", "0"], "--adam_epsilon"),
    (["--adam_weight_decay", "-1"], "--adam_weight_decay"), (["--max_grad_norm", "0"], "--max_grad_norm"),
    (["--max_grad_norm", "inf"], "--max_grad_norm"), (["--lr_warmup_steps", "-1"], "--lr_warmup_steps"),
    (["--lr_scheduler", "piecewise_constant"], "--lr_scheduler"), (["--lr_scheduler", "cosin"], "--lr_scheduler"),
    (["--train_batch_size", "0"], "--train_batch_size"), (["--train_batch_size", "-4"], "--train_batch_size"),
    (["--gradient_accumulation_steps", "0"], "--gradient_accumulation_steps"), (["--num_epochs", "0"], "--num_epochs"),
    (["--max_train_steps", "-1"], "--max_train_steps"), (["--checkpointing_steps", "0"], "--checkpointing_steps"),
    (["--checkpoints_total_limit", "0"], "--checkpoints_total_limit"),
    (["--save_model_epochs", "0"], "--save_model_epochs"), (["--save_images_epochs", "-1"], "--save_images_epochs"),
    (["--num_inference_steps", "0"], "--num_inference_steps"), (["--max_nonfinite_steps", "0"], "--max_nonfinite_steps"),
    (["--resolution", "0"], "--resolution"), (["--resolution", "36"], "--resolution"),
    (["--dataloader_num_workers", "-1"], "--dataloader_num_workers"),
    (["--num_train_timesteps", "0"], "--num_train_timesteps"), (["--beta_schedule", "cosine"], "--beta_schedule"),
    (["--snr_gamma", "nan"], "--snr_gamma"), (["--cond_drop_prob", "1.5"], "--cond_drop_prob"),
    (["--attr_drop_prob", "-0.1"], "--attr_drop_prob"), (["--use_ema", "--ema_decay", "1.5"], "--ema_decay"),
    (["--no-use_ema", "--ema_decay", "0.99"], "--ema_decay needs --use_ema"), (["--seed", "-1"], "--seed"),
    (["--guidance_scale", "-1"], "--guidance_scale"), (["--block_out_channels", "0", "64"], "--block_out_channels"),
    (["--block_out_channels", "48", "64"], "--block_out_channels"),
    (["--block_out_channels", "4", "8", "--attention_levels", "0"], "--block_out_channels"),
    (["--attention_levels", "4"], "--attention_levels"), (["--attention_levels", "-1"], "--attention_levels"),
    (["--layers_per_block", "0"], "--layers_per_block"), (["--cross_attention_dim", "0"], "--cross_attention_dim"),
    (["--report_to", "tensorbored"], "--report_to"), (["--mixed_precision", "fp8"], "--mixed_precision"),
    (["--hub_push_snapshots"], "--hub_push_snapshots needs --push_to_hub"),
]


@pytest.mark.parametrize("flags, fragment", BAD_FLAGS, ids=[" ".join(flags) for flags, _ in BAD_FLAGS])
def test_bad_flag_is_a_one_line_error(flags, fragment):
    code, stderr = parse_error("train_fairface.py", *flags)
    assert code == 2
    last = stderr.strip().splitlines()[-1]
    assert "error: " in last and fragment in last, last


@pytest.mark.e2e
def test_bad_flags_as_a_user_runs_them(data160, tmp_path):
    """From the command line: a pixel-cache path that is a file is one line, exit 2, no traceback (the flag
    errors parse_args finds are test_bad_flag_is_a_one_line_error's, in process)."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = run_script("train_fairface.py", "--dataset_name", data160, "--output_dir", tmp_path / "run",
                        *TINY_MODEL_ARGS, "--preprocess_cache", blocker, check=False)
    assert_one_line_error(result, f"cannot build the pixel cache in '{blocker}'")


@pytest.mark.skipif(importlib.util.find_spec("wandb") is not None, reason="wandb is installed here")
def test_a_tracker_that_is_not_installed_says_how_to_install_it(tmp_path):
    code, stderr = parse_error("train_fairface.py", "--report_to", "wandb", "--output_dir", tmp_path / "out")
    assert code == 2 and "wandb is not installed; run `pip install wandb`" in stderr.strip().splitlines()[-1]
    assert not (tmp_path / "out").exists()


@pytest.mark.e2e
def test_fp16_on_a_cpu_says_it_trains_in_float32(data160, tmp_path):
    log = run(["--dataset_name", data160, "--output_dir", tmp_path / "run", *TINY_MODEL_ARGS, *SMALL,
               "--train_batch_size", "16", "--max_train_steps", "1", "--save_model_epochs", "100",
               "--save_images_epochs", "100", "--num_inference_steps", "1", "--mixed_precision", "fp16"],
              tmp_path / "fp16.log")
    assert "--mixed_precision fp16 on a CPU: accelerate has no float16 autocast there, so this run trains in " \
           "float32" in log
    card = (tmp_path / "run" / "README.md").read_text()  # the model card says what the run did, not the flag
    assert "float32; weights stored as float32" in card and "float16" not in card
