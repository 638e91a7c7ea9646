"""Shared fixtures: an offline Hugging Face home, a generated FairFace-layout dataset, a tiny trained run.

Scripts are run as a user runs them (subprocess, from the repository root). Everything is offline: the
datasets/Hub caches live in a temporary folder for the whole session (datasets caches local folders by path
and config, so a shared real cache could serve stale data).
"""

import contextlib
import importlib
import io
import os
import socket
import subprocess
import sys
import tempfile

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

_HF_HOME = tempfile.mkdtemp(prefix="fairface-tests-hf-")
os.environ.update(HF_HOME=_HF_HOME, HF_DATASETS_CACHE=os.path.join(_HF_HOME, "datasets"), HF_HUB_OFFLINE="1",
                  HF_DATASETS_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1", TOKENIZERS_PARALLELISM="false",
                  GRADIO_ANALYTICS_ENABLED="False", PYTHONUNBUFFERED="1", OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
import warm_python  # after the environment above: its server is started with it

WARM_WORKER = os.path.join(REPO, "tests", "warm_worker.py")

# A UNet of 1.0 M parameters at 32 px: trains a few hundred steps in seconds on a laptop CPU.
# --no-use_ema: EMA is on by default for full-data runs (off with --demo); tests that need it pass --use_ema after.
TINY_MODEL_ARGS = ["--resolution", "32", "--block_out_channels", "32", "64", "--layers_per_block", "1",
                   "--cross_attention_dim", "32", "--report_to", "none", "--lr_warmup_steps", "10", "--no-use_ema"]


@pytest.fixture(autouse=True)
def _environment_restored():
    """Each test starts with the environment the previous one started with: a variable a test or a library it calls
    in this process sets (gradio's Blocks sets HF_HUB_DISABLE_TELEMETRY) would otherwise reach every later test, and
    send every later script run cold (tests/warm_python.py)."""
    before = dict(os.environ)
    yield
    for key in set(before) | set(os.environ):
        if key != "PYTEST_CURRENT_TEST" and os.environ.get(key) != before.get(key):  # pytest's own, per test phase
            if key in before:
                os.environ[key] = before[key]
            else:
                del os.environ[key]


def pytest_terminal_summary(terminalreporter):
    """How the session's script runs started: warm (forked by tests/warm_python.py) or cold, and why cold."""
    if warm_python.RUNS:
        runs = ", ".join(f"{count} {kind}" for kind, count in warm_python.RUNS.most_common())
        terminalreporter.write_line(f"script runs: {runs}")


def free_port():
    """A TCP port free on 127.0.0.1 now (torchrun's --master_port, the app's --port)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def parse_error(script, *argv):
    """(exit status, stderr) of ``script``'s ``parse_args(argv)`` that must fail: the argument check as the command
    line runs it, in this process (a subprocess per bad flag pays seconds of imports for nothing)."""
    module = importlib.import_module(os.path.splitext(script)[0])
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), pytest.raises(SystemExit) as exit_:
        module.parse_args([str(arg) for arg in argv])
    return exit_.value.code, stderr.getvalue()


def run_script(script, *args, check=True, env=None, timeout=1800):
    """Run ``python script args`` from the repo root; returns the CompletedProcess (stdout+stderr text).

    A process of its own, forked by tests/warm_python.py with the libraries already imported (a cold
    ``python`` where ``env`` changes what they read at import)."""
    command, env = [os.path.join(REPO, script), *map(str, args)], {**os.environ, **(env or {})}
    result = warm_python.run(command, REPO, env, timeout) or subprocess.run(
        [sys.executable, *command], cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env)
    if check and result.returncode != 0:
        raise AssertionError(f"{script} exited {result.returncode}\n--- stdout\n{result.stdout[-4000:]}"
                             f"\n--- stderr\n{result.stderr[-6000:]}")
    return result


def torchrun(launcher_flags, script, *args, env=None):
    """The command ``python -m torch.distributed.run LAUNCHER_FLAGS script args``. torchrun starts each worker as
    it starts a user's; where ``env`` (default: this process's) allows, that worker is a stand-in whose script is
    forked from the warm Python (tests/warm_worker.py): 12 s of imports and 3 s of teardown less per worker."""
    launcher = [sys.executable, "-m", "torch.distributed.run", *map(str, launcher_flags)]
    env = dict(os.environ) if env is None else env
    # Without OMP_NUM_THREADS, the scripts ask their parent's environment whether the user chose a thread count
    # (utils/run/distributed.py): a warm worker's parent is the server, so that run is cold.
    server = warm_python.server_for(env) if "OMP_NUM_THREADS" in env else warm_python._cold("torchrun's threads")
    if server is None:
        return [*launcher, str(script), *map(str, args)]
    warm_python.RUNS["warm torchrun"] += 1
    return [*launcher, "--no-python", sys.executable, WARM_WORKER, server["socket"], server["status_dir"], str(script),
            *map(str, args)]


def start_script(argv, log_path, cwd=REPO, env=None):
    """Start ``python *argv`` in its own session (a process group to signal), stdout and stderr to ``log_path``;
    forked warm where ``env`` allows (run_script). Returns a Popen-like process with ``log_path``."""
    argv, env = [str(a) for a in argv], env or dict(os.environ)
    open(log_path, "w").close()
    process = warm_python.start(argv, cwd, env, log_path, new_session=True)
    if process is None:
        with open(log_path, "w") as log:
            process = subprocess.Popen([sys.executable, *argv], cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                                       env=env, start_new_session=True)
    process.log_path = log_path
    return process


def save_tiny_pipeline(folder, scheduler=None, **sampling_defaults):
    """An untrained 32 px pipeline (seeded), saved as training saves one (safetensors and the shipped code), for
    tests of plumbing rather than pictures. ``scheduler``: the DPM-Solver++ of training's noise schedule by
    default. Returns (the pipeline, the folder as a string)."""
    import torch
    from diffusers import DDPMScheduler

    from utils.hub import remote_code
    from utils.model.pipeline import ConditionEncoder, FairFacePipeline, build_unet

    torch.manual_seed(0)
    training = DDPMScheduler(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction")
    pipe = FairFacePipeline(unet=build_unet(32, (16, 32), 1, cross_attention_dim=16),
                            condition_encoder=ConditionEncoder(16), scheduler=scheduler or training,
                            sampling_defaults=dict(num_inference_steps=3, guidance_scale=2.0, guidance_interval=None,
                                                   **sampling_defaults))
    if scheduler is None:
        pipe.set_scheduler("dpm++")
    remote_code.save_pipeline(pipe, str(folder))
    return pipe, str(folder)


@pytest.fixture(scope="session")
def demo_dataset(tmp_path_factory):
    """A FairFace-layout folder (configs 0.25/1.25, splits train/validation) of 504 synthetic faces."""
    from utils.data.demo_data import make_demo_dataset

    return make_demo_dataset(str(tmp_path_factory.mktemp("data") / "fairface"), num_images=504, resolution=32)


@pytest.fixture(scope="session")
def tiny_run(demo_dataset, tmp_path_factory):
    """A 3-epoch run of train_fairface.py with EMA: epoch_1..3 snapshots, samples, final pipeline at the root.

    It also feeds the condition into the timestep embedding and trains with the framing condition (both off by
    default), so sampling, the Hub card's snippet, the shipped code and evaluation are tested on those variants
    too; the other runs use the defaults."""
    output_dir = tmp_path_factory.mktemp("runs") / "tiny"
    run_script("train_fairface.py", "--dataset_name", demo_dataset, "--output_dir", output_dir, *TINY_MODEL_ARGS,
               "--train_batch_size", "16", "--num_epochs", "3", "--save_model_epochs", "1", "--save_images_epochs",
               "1", "--checkpointing_steps", "1000", "--learning_rate", "1e-3", "--use_ema", "--random_flip",
               "--condition_in_time_embedding", "--framing_condition", "--prediction_type", "v_prediction")
    return str(output_dir)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """Randomly initialised CLIP, DINOv2 and a gender ViT at 32 px (tests/test_evaluate.py writes them), saved once:
    {"clip", "dinov2", "gender_vit": folder}."""
    from test_evaluate import _write_clip, _write_dinov2, _write_gender_vit

    root = tmp_path_factory.mktemp("eval-models")
    paths = {name: str(root / name) for name in ("clip", "dinov2", "gender_vit")}
    _write_clip(paths["clip"])
    _write_dinov2(paths["dinov2"])
    _write_gender_vit(paths["gender_vit"])
    return paths


@pytest.fixture(scope="session")
def clean_python(tmp_path_factory):
    """python of a venv with only torch, diffusers and safetensors: $FAIRFACE_CLEAN_VENV (.ci/run makes it once),
    else one made here. Skipped, with pip's reason, only where pip cannot install them."""
    from clean_venv import make_clean_venv

    folder = os.environ.get("FAIRFACE_CLEAN_VENV") or str(tmp_path_factory.mktemp("venv") / "clean")
    try:
        return make_clean_venv(folder)
    except RuntimeError as error:
        pytest.skip(str(error))


@pytest.fixture(scope="session")
def demo_model(tmp_path_factory):
    """The demo recipe (train_fairface.py --demo, with framing) stopped after 5 epochs (315 steps): it draws the
    requested gender (tests/test_app.py's docstring) and framing (tests/test_framing.py); tests/test_distill.py
    distils it. The suite's costliest fixture (11 minutes on this 2-core machine; at 4 epochs the tight framing
    was drawn for 3 of test_app's 6 faces, under its 4), trained once. FAIRFACE_APP_TEST_MODEL names an
    already trained one."""
    if os.environ.get("FAIRFACE_APP_TEST_MODEL"):
        return os.environ["FAIRFACE_APP_TEST_MODEL"]
    root = tmp_path_factory.mktemp("app-model")
    run_script("train_fairface.py", "--demo", "--dataset_name", root / "data", "--output_dir", root / "demo",
               "--preprocess_cache", root / "cache", "--num_epochs", "5", "--save_model_epochs", "5",
               "--save_images_epochs", "5", "--checkpointing_steps", "100000", "--report_to", "none",
               "--framing_condition")
    return str(root / "demo")
