"""The promise matrix (issue 30): each promise of docs/reliability.md, run against every script that makes it.

A ``Row`` says how to run a script tiny (4 steps, a checkpoint every 2) and, per promise, what it takes: the flag a
resume applies, the flag it refuses, the weights a checkpoint holds. A new script joins by adding a row; a promise
it does not make is left out of its row (``None``), and the test list below shows the gap. One straight run per
script (``straight``) serves several promises: the scalars its tracker wrote, the checkpoint the resume tests start
from and the weights every interrupted run must end with, bitwise.

Promises kept by utils/run/lifecycle.py for train_fairface.py and distill_fairface.py: a changed hyper-parameter
on resume applied, a recorded flag refused by name; SIGTERM checkpoints and exits 0; kill -9 then the same command
gives the straight run, and `latest` never takes a half-written or decoy folder nor unpickles a planted .bin;
--report_to tensorboard writes scalars and samples; a rank that fails ends every rank with its message;
--ddp_timeout is the process group's.
"""

import glob
import os
import shutil
import signal
from dataclasses import dataclass, field

import pytest
import torch

from conftest import TINY_MODEL_ARGS
from test_resume import (add_decoy_checkpoints, assert_bitwise_equal, finish, launch, malicious_pickle, resumed_from,
                         run, wait_for, weights)
from utils.run import checkpoints, distributed

STEPS = 4


@dataclass
class Row:
    """How one script keeps the promises. Its units of saved work are checkpoints (train, distill: checkpoint-2
    and -4 of a 4-step run) or shards (generate_dataset: 4 of them); ``None`` leaves a promise out."""
    script: str
    args: object  # (fixtures, output folder) -> the tiny run's arguments
    rerun: list  # what the same command adds to go on after a stop or a kill
    units: tuple  # the test hook's names of the first two saves (FAIRFACE_TEST_SAVE_FAULT=NAME:ACTION)
    stopped: str  # what a SIGTERM at the first save prints
    weight_folders: tuple = None  # checkpoints: what a checkpoint holds, compared bitwise
    applied: tuple = None  # (flag, value): a resume applies it from its step on (the run then ends elsewhere)
    refused: tuple = None  # (flag, value): a rerun refuses it by name, exit 2
    tracker: bool = False  # --report_to tensorboard writes scalars and samples
    fail_at: str = None  # a save that meets a full disk on one rank of two
    slow_rank_0: tuple = None  # (hook making rank 0 slow while rank 1 waits in a barrier, extra arguments)
    ranks_args: list = field(default_factory=list)  # the two-process runs' own arguments (half batches)

    def saving(self, out, unit):
        temporary = f".tmp-checkpoint-{unit}" if self.weight_folders else os.path.join("data", f".tmp-{unit}")
        return lambda: os.path.exists(os.path.join(out, temporary))

    def complete(self, out, unit):
        if self.weight_folders:
            return os.path.isfile(os.path.join(out, f"checkpoint-{unit}", checkpoints.TRAINING_STATE))
        return os.path.isfile(os.path.join(out, "data", unit))

    def outputs(self, out):
        """What the straight run and an interrupted one must agree on, bitwise."""
        if self.weight_folders:
            return {**weights(f"{out}/checkpoint-{STEPS}", self.weight_folders), **{
                f"release/{k}": v for k, v in weights(out, ("unet",)).items()}}
        return {os.path.basename(p): open(p, "rb").read() for p in sorted(glob.glob(os.path.join(out, "data", "*")))}


def train_args(fixtures, out):
    return ["--dataset_name", fixtures["data"], "--output_dir", out, *TINY_MODEL_ARGS, "--block_out_channels", "16",
            "32", "--cross_attention_dim", "16", "--use_ema", "--train_batch_size", "16", "--learning_rate", "1e-3",
            "--save_model_epochs", "100", "--save_images_epochs", "100", "--num_inference_steps", "2",
            "--max_train_steps", str(STEPS), "--checkpointing_steps", "2", "--logging_steps", "1"]


def distill_args(fixtures, out):
    return ["--teacher", fixtures["teacher"], "--dataset_name", fixtures["data"], "--output_dir", out,
            "--train_batch_size", "16", "--learning_rate", "1e-4", "--lr_warmup_steps", "1", "--num_ddim_timesteps",
            "10", "--max_train_steps", str(STEPS), "--checkpointing_steps", "2", "--logging_steps", "1"]


def generate_args(fixtures, out):  # 3 conditions x 2 images in 4 shards of 2
    return ["--model", fixtures["teacher"], "--output_dir", out, "--conditions", "0", "42", "125",
            "--images_per_condition", "2", "--shard_size", "2", "--num_inference_steps", "2", "--batch_size", "2",
            "--device", "cpu", "--seed", "7"]


SHARDS = [f"train-{k:05d}-of-00003.parquet" for k in range(3)]
CHECKPOINTED = dict(rerun=["--resume_from_checkpoint", "latest"], units=("2", "4"), stopped="stopped at step 2 by "
                    "SIGTERM", tracker=True, fail_at="2", ranks_args=["--train_batch_size", "8"],
                    slow_rank_0=("pixel-cache-parts:sleep:12", ["--preprocess_cache"]))
ROWS = [
    Row("train_fairface.py", train_args, weight_folders=("unet", "condition_encoder", "unet_ema",
        "condition_encoder_ema"), applied=("--learning_rate", "5e-3"), refused=("--train_batch_size", "8"),
        **CHECKPOINTED),
    Row("distill_fairface.py", distill_args, weight_folders=("unet", "unet_target"),
        applied=("--learning_rate", "1e-3"), refused=("--guidance_scale", "3"), **CHECKPOINTED),
    Row("generate_dataset.py", generate_args, rerun=[], units=SHARDS[:2], stopped="stopped by SIGTERM with 2 of 3 "
        "shards to go", refused=("--seed", "8"), fail_at=SHARDS[1],  # shard 1: the second process's
        slow_rank_0=(f"{SHARDS[0]}:sleep:12", [])),  # rank 1 writes shard 1 and waits for shard 0
]


def rows(promise):
    return [pytest.param(row, id=row.script.removesuffix(".py")) for row in ROWS if getattr(row, promise)]


@pytest.fixture(scope="module")
def fixtures(tiny_run, tmp_path_factory):
    """48 faces: 3 steps an epoch at 16 a step (8 on each of two processes), so a run of 4 steps resumed from
    checkpoint-2 goes on mid-epoch and crosses into the next epoch."""
    from utils.data.demo_data import make_demo_dataset

    data = make_demo_dataset(str(tmp_path_factory.mktemp("promises-data") / "fairface"), num_images=48, resolution=32)
    return {"data": data, "teacher": tiny_run}


@pytest.fixture(scope="module")
def straight(fixtures, tmp_path_factory):
    """{script: the folder of its straight run}, each run once (with a tracker where the script has them)."""
    done = {}

    def get(row):
        if row.script not in done:
            out = tmp_path_factory.mktemp("straight") / row.script.removesuffix(".py")
            tracker = ["--report_to", "tensorboard", "--tracker_project_name", "promises", "--validation_conditions",
                       "0", "125"] if row.tracker else []
            run([*row.args(fixtures, out), *tracker], f"{out}.log", script=row.script)
            done[row.script] = str(out)
        return done[row.script]
    return get


def copy_checkpoint(source, out, step=2):
    shutil.copytree(os.path.join(source, f"checkpoint-{step}"), os.path.join(out, f"checkpoint-{step}"))


def test_ddp_timeout_reaches_the_process_group_whatever_its_value():
    """accelerate's handler leaves out a timeout equal to its class default (600 s), and the backend then takes its
    own (gloo: 1800 s): --ddp_timeout 600 must still be 600 s."""
    for seconds in (3, 600, 7200):
        timeout = distributed.process_group_kwargs(seconds).to_kwargs()["timeout"]
        assert abs(timeout.total_seconds() - seconds) < 1e-3


# ------------------------------------------------------------------------------------------------ resume
@pytest.mark.e2e
@pytest.mark.parametrize("row", rows("applied"))
def test_resume_applies_a_changed_hyper_parameter(row, fixtures, straight, tmp_path):
    """Resumed from checkpoint-2 (named as the diffusers examples name it, inside --output_dir) with another
    --learning_rate: the run says so and trains with it, so it ends elsewhere than the straight run (a script
    that kept the checkpoint's rate ended bitwise equal to it)."""
    out = tmp_path / "run"
    copy_checkpoint(straight(row), out)
    flag, value = row.applied
    output = run([*row.args(fixtures, out), "--resume_from_checkpoint", "checkpoint-2", flag, value],
                 tmp_path / "run.log", script=row.script)
    assert resumed_from(output) == f"resumed from {out}/checkpoint-2 at step 2"
    assert "resuming with new settings" in output and f"{flag} " in output.split("resuming with new settings")[1]
    expected, actual = weights(f"{straight(row)}/checkpoint-{STEPS}", ("unet",)), \
        weights(f"{out}/checkpoint-{STEPS}", ("unet",))
    assert expected.keys() == actual.keys()
    assert any(not torch.equal(expected[name], actual[name]) for name in expected), f"{flag} {value} was not applied"


@pytest.mark.e2e
@pytest.mark.parametrize("row", rows("refused"))
def test_a_rerun_refuses_a_recorded_flag_by_name(row, fixtures, straight, tmp_path):
    """The same command with a flag the run recorded changed (a resume from checkpoint-2; a rerun on a dataset
    folder): exit 2, one line naming the flag, nothing written."""
    out = tmp_path / "run"
    if row.weight_folders:
        copy_checkpoint(straight(row), out)
    else:
        shutil.copytree(straight(row), out)
    before = sorted(set(os.listdir(out)) - {".run-lock"})  # the lock file: the run's own, written first
    flag, value = row.refused
    code, output = finish(launch([*row.args(fixtures, out), *row.rerun, flag, value], tmp_path / "run.log",
                                 script=row.script))
    last = output.strip().splitlines()[-1]
    assert code == 2 and "Traceback" not in output, output[-4000:]
    now = f"now {flag} {value}" if row.weight_folders else f"now {value}"  # generate_dataset: "--seed 7, now 8"
    assert flag in last and now in last, last
    assert sorted(set(os.listdir(out)) - {".run-lock"}) == before


# ------------------------------------------------------------------------------------------------ stop and kill
@pytest.mark.e2e
@pytest.mark.parametrize("row", rows("units"))
def test_sigterm_then_kill_9_then_the_same_command_is_the_straight_run(row, fixtures, straight, tmp_path):
    """SIGTERM during the first save (checkpoint-2, shard 0): the run finishes it, says how to go on, exits 0,
    finishes nothing else. The same command is SIGKILLed while the second save is half written: the first stays.
    The same command again ends bitwise where the straight run ended. Checkpointed scripts: `latest` skips decoy
    folders and the half-written one, and a malicious .bin beside each model's safetensors is never unpickled."""
    out = str(tmp_path / "run")
    args = [*row.args(fixtures, out), *row.rerun]  # a resume with no checkpoint yet: a new run
    first, second = row.units
    process = launch(args, tmp_path / "1.log", env={"FAIRFACE_TEST_SAVE_FAULT": f"{first}:pause"}, script=row.script)
    wait_for(row.saving(out, first), process, f"save {first}")
    process.send_signal(signal.SIGTERM)
    code, output = finish(process)
    assert code == 0 and row.stopped in output, output[-6000:]
    assert row.complete(out, first) and not row.complete(out, second)
    if row.weight_folders:
        assert "no complete checkpoint yet: starting a new run" in output
        assert "--resume_from_checkpoint latest" in output and not os.path.exists(os.path.join(out, "model_index.json"))

    process = launch(args, tmp_path / "2.log", env={"FAIRFACE_TEST_SAVE_FAULT": f"{second}:hold"}, script=row.script)
    wait_for(row.saving(out, second), process, f"save {second}")
    process.send_signal(signal.SIGKILL)
    code, output = finish(process)
    assert code == -signal.SIGKILL and row.complete(out, first) and not row.complete(out, second)

    marker = tmp_path / "UNPICKLED"
    if row.weight_folders:
        assert resumed_from(output) == f"resumed from {out}/checkpoint-2 at step 2"
        add_decoy_checkpoints(out)
        for sub in row.weight_folders:
            malicious_pickle(os.path.join(out, "checkpoint-2", sub, "diffusion_pytorch_model.bin"), str(marker))
    output = run(args, tmp_path / "3.log", script=row.script)
    assert not marker.exists(), "resuming unpickled a .bin"
    expected, actual = row.outputs(straight(row)), row.outputs(out)
    if row.weight_folders:
        assert resumed_from(output) == f"resumed from {out}/checkpoint-2 at step 2"
        assert checkpoints.resolve_checkpoint(out, "latest") == f"{out}/checkpoint-{STEPS}"
        assert_bitwise_equal(expected, actual)
    else:
        assert expected.keys() == actual.keys() and expected == actual


# ------------------------------------------------------------------------------------------------ memory
@pytest.mark.e2e
@pytest.mark.parametrize("row", rows("weight_folders"))
def test_gradient_checkpointing_trains_the_same_weights(row, fixtures, straight, tmp_path):
    """--gradient_checkpointing recomputes activations instead of keeping them: the first two steps give the
    straight run's checkpoint-2, bitwise, and the run names the models whose own (diffusers') flag says they
    checkpoint."""
    out = tmp_path / "run"
    output = run([*row.args(fixtures, out), "--gradient_checkpointing", "--max_train_steps", "2"],
                 tmp_path / "run.log", script=row.script)
    assert "done: 2 steps" in output and "gradient checkpointing: unet recompute" in output
    assert_bitwise_equal(weights(f"{straight(row)}/checkpoint-2", row.weight_folders),
                         weights(f"{out}/checkpoint-2", row.weight_folders))


# ------------------------------------------------------------------------------------------------ trackers
@pytest.mark.e2e
@pytest.mark.parametrize("row", rows("tracker"))
def test_tensorboard_gets_the_scalars_and_the_samples(row, straight):
    """The straight run's --report_to tensorboard: loss, grad norm and LR at every logged step, under
    --tracker_project_name's folder, and the --validation_conditions samples (two ids given) as images."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert os.listdir(os.path.join(straight(row), "logs")) == ["promises"]  # --tracker_project_name
    events = EventAccumulator(os.path.join(straight(row), "logs", "promises"), size_guidance={"images": 0})
    events.Reload()
    tags = events.Tags()
    for tag in ("loss", "grad_norm", "lr"):
        assert tag in tags["scalars"], tags
        assert [event.step for event in events.Scalars(tag)] == list(range(1, STEPS + 1))
    assert all(value.value == value.value for value in events.Scalars("loss"))  # finite, not NaN
    assert "samples" in tags["images"], tags
    (logged,) = events.Images("samples")[-1:]
    assert logged.step == STEPS and (logged.width, logged.height) == (2 * 32, 32)  # the two side by side
    written = sorted(name for name in os.listdir(straight(row)) if name.startswith("sample_"))
    assert len(written) == 2 and written[0].endswith("_0.png"), written  # one per --validation_conditions id


# ------------------------------------------------------------------------------------------------ several ranks
@pytest.mark.e2e
@pytest.mark.parametrize("row", rows("fail_at"))
def test_a_rank_that_fails_ends_every_rank_with_its_message(row, fixtures, tmp_path):
    """Two processes; one meets a full disk in a save (the test hook) while the other goes on or waits for it: the
    whole launch ends at once (not after --ddp_timeout's hour) with the failing rank's one line."""
    out = tmp_path / "run"
    code, output = finish(launch([*row.args(fixtures, out), *row.ranks_args, "--ddp_timeout", "3600"],
                                 tmp_path / "run.log", env={"FAIRFACE_TEST_SAVE_FAULT": f"{row.fail_at}:enospc"},
                                 nproc=2, script=row.script), timeout=300)
    assert code != 0, output[-4000:]
    failure = [line for line in output.splitlines() if f"{row.script}: error: could not write" in line]
    assert failure and "No space left on device" in failure[0], output[-4000:]
    assert "error: another process of this run ended" in output, output[-4000:]  # the other rank's line
    assert "]: Traceback" not in output, output[-4000:]  # its broken barrier is no traceback


@pytest.mark.e2e
@pytest.mark.parametrize("row", rows("slow_rank_0"))
def test_ddp_timeout_is_the_process_groups(row, fixtures, tmp_path):
    """Two processes; rank 0 is slow (12 s: assembling the pixel cache, writing a shard) while rank 1 waits in a
    barrier: with --ddp_timeout 3 the wait ends the run (the flag reached the process group; the default, 7200,
    lets the same run through: tests/test_field_faults.py)."""
    out = tmp_path / "run"
    hook, extra = row.slow_rank_0
    extra = [*extra, tmp_path / "cache"] if extra else []
    code, output = finish(launch([*row.args(fixtures, out), *row.ranks_args, "--ddp_timeout", "3", *extra],
                                 tmp_path / "run.log", env={"FAIRFACE_TEST_SAVE_FAULT": hook}, nproc=2,
                                 script=row.script), timeout=300)
    assert code != 0 and "error: waited for the other processes longer than --ddp_timeout 3 s" in output, \
        output[-4000:]
