"""The product's real model (issue 13): train_fairface.py's default architecture -- the seed's 81 M-parameter
UNet, no --block_out_channels override -- at its default 128 px trains, checkpoints, stops on SIGTERM, resumes
and releases a pipeline that samples, on a CPU: 2 steps of batch 1, sampler settings cut to 1 step without
guidance. One release only: at 128 px one image costs 194 GFLOP to sample (benchmarks/model_cost.py), and
the release draws 31. Bitwise exact resume itself is tests/test_resume.py's business (the same code path).
"""

import os
import signal

import numpy as np
import pytest
from safetensors.torch import load_file

from test_resume import finish, launch, resumed_from, saving, wait_for

pytestmark = pytest.mark.e2e  # every test here trains a model or runs a script

CHEAP = ["--train_batch_size", "1", "--max_train_steps", "2", "--checkpointing_steps", "1", "--report_to", "none",
         "--num_inference_steps", "1", "--guidance_scale", "1", "--save_model_epochs", "100",
         "--save_images_epochs", "100", "--lr_warmup_steps", "0"]
THREADS = {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}


@pytest.fixture(scope="module")
def data16(tmp_path_factory):
    from utils.data.demo_data import make_demo_dataset

    return make_demo_dataset(str(tmp_path_factory.mktemp("seed-model-data") / "fairface"), num_images=16,
                             resolution=32)


def unet_weights(folder, subfolder="unet"):
    return load_file(os.path.join(folder, subfolder, "diffusion_pytorch_model.safetensors"))


def test_default_architecture_at_128px_trains_stops_resumes_and_releases(data16, tmp_path):
    from train_fairface import parse_args
    from utils.model.pipeline import generate, load_pipeline

    defaults = parse_args([])
    assert defaults.resolution == 128 and defaults.block_out_channels == [64, 128, 256, 512]
    out = str(tmp_path / "run")
    args = ["--dataset_name", data16, "--output_dir", out, *CHEAP, "--resume_from_checkpoint", "latest"]

    # 1. SIGTERM while checkpoint-1 is written: the run completes it and stops, without a release.
    process = launch(args, tmp_path / "1.log", env={**THREADS, "FAIRFACE_TEST_SAVE_FAULT": "1:pause"})
    wait_for(saving(out, 1), process, "checkpoint-1", timeout=900)
    process.send_signal(signal.SIGTERM)
    code, output = finish(process, timeout=900)
    assert code == 0 and "stopped at step 1 by SIGTERM" in output, output[-6000:]
    assert "81,4" in output, "not the seed's 81 M-parameter UNet"  # the start line: "81,4xx,xxx UNet parameters"
    assert not os.path.exists(os.path.join(out, "model_index.json"))

    # 2. Resume: step 2, checkpoint-2 and the release (pipeline, samples.png, model card).
    code, output = finish(launch(args, tmp_path / "2.log", env=THREADS), timeout=1800)
    assert code == 0, output[-6000:]
    assert resumed_from(output) == f"resumed from {out}/checkpoint-1 at step 1"
    for name in ("checkpoint-2", "model_index.json", "samples.png", "README.md"):
        assert os.path.exists(os.path.join(out, name)), name
    first, second, released = (unet_weights(f"{out}/checkpoint-1"), unet_weights(f"{out}/checkpoint-2"),
                               unet_weights(out))
    assert all(second[name].isfinite().all() for name in second)
    assert any(not first[name].equal(second[name]) for name in first), "step 2 did not change the weights"
    ema = unet_weights(f"{out}/checkpoint-2", "unet_ema")  # EMA is on by default without --demo
    assert all(ema[name].equal(released[name]) for name in ema), "the release is not the last step's EMA"
    assert any(not ema[name].equal(second[name]) for name in ema), "the EMA is not an average"

    pipeline = load_pipeline(out)  # our code-free loader (the release also ships code for plain diffusers)
    config = pipeline.unet.config
    assert tuple(config.block_out_channels) == (64, 128, 256, 512) and config.sample_size == 128
    assert config.layers_per_block == 3 and config.cross_attention_dim == 512
    assert 81e6 < sum(p.numel() for p in pipeline.unet.parameters()) < 82e6
    image, = generate(pipeline, [(3, 0, 0)], [0], num_inference_steps=1, guidance_scale=1.0)
    pixels = np.asarray(image)
    assert pixels.shape == (128, 128, 3) and pixels.std() > 0
