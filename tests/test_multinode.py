"""Several machines (issue 13): two torchrun "nodes" of one CPU process each (127.0.0.1, gloo) train exactly the
weights of one node with two processes, resume included, and every shared file has exactly one writer.

The nodes share --output_dir (checkpoints, snapshots, release) like a cluster file system. The pixel cache is
shared in the first run (the global main builds it, the other node reads it) and node-local in the resumed run
(node 1 gets a folder node 0 does not see, and builds its own copy after node 0).
"""

import os
import shutil
import signal
import subprocess

import pytest

from conftest import REPO, free_port, torchrun
from test_resume import COMMON, assert_same_run, finish, run

pytestmark = pytest.mark.e2e  # every test here trains a model or runs a script

STEPS = 12  # test_resume's COMMON: --max_train_steps 12; 160 images at 2 x 8 per step: 10 steps per epoch


@pytest.fixture(scope="module")
def data160(tmp_path_factory):
    from utils.data.demo_data import make_demo_dataset

    return make_demo_dataset(str(tmp_path_factory.mktemp("multinode-data") / "fairface"), num_images=160,
                             resolution=32)


def launch_node(node_rank, port, args, log_path):
    """One "machine": torchrun --nnodes 2 --nproc_per_node 1 --node_rank R, rendezvous at 127.0.0.1:port."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"}
    command = torchrun(["--nnodes", "2", "--nproc_per_node", "1", "--node_rank", node_rank, "--master_addr",
                        "127.0.0.1", "--master_port", port], os.path.join(REPO, "train_fairface.py"), *args, env=env)
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env,
                                   start_new_session=True)
    process.log_path = log_path
    return process


def run_two_nodes(args_per_node, tmp_path, name):
    """Both nodes to the end, exit 0; returns their outputs."""
    port = free_port()
    nodes = [launch_node(rank, port, args, tmp_path / f"{name}-node{rank}.log") for rank, args in
             enumerate(args_per_node)]
    results = []
    try:
        for node in nodes:
            results.append(finish(node, timeout=600))
    finally:
        for node in nodes:
            if node.poll() is None:
                os.killpg(node.pid, signal.SIGKILL)
    for rank, (code, output) in enumerate(results):
        assert code == 0, f"node {rank} exited {code}\n{output[-6000:]}"
    return [output for _, output in results]


def cache_folders(root):
    return sorted(os.listdir(root)) if os.path.isdir(root) else []


def test_two_nodes_match_one_node_with_two_processes_and_resume(data160, tmp_path):
    args = ["--dataset_name", data160, *COMMON, "--train_batch_size", "8", "--checkpointing_steps", "6"]
    reference = str(tmp_path / "reference")
    run([*args, "--output_dir", reference, "--preprocess_cache", tmp_path / "reference-cache"],
        tmp_path / "reference.log", nproc=2)

    # 1. Two nodes, one shared output folder and pixel cache: node 0 (the global main) builds the cache alone.
    shared, cache = str(tmp_path / "two-nodes"), str(tmp_path / "shared-cache")
    outputs = run_two_nodes([[*args, "--output_dir", shared, "--preprocess_cache", cache]] * 2, tmp_path, "run")
    assert "2 process(es)" in outputs[0]
    assert "caching pixels" in outputs[0] and "caching pixels" not in outputs[1], "node 1 rebuilt the cache"
    assert len(cache_folders(cache)) == 1 and not cache_folders(cache)[0].count(".tmp"), cache_folders(cache)
    assert_same_run(reference, shared)
    assert not [name for name in os.listdir(shared) if name.startswith((".tmp", ".old", ".write-test"))]

    # 2. Resume on two nodes from checkpoint-6, node 1 on a node-local cache folder node 0 does not see.
    resumed, local_cache = str(tmp_path / "resumed"), str(tmp_path / "node1-local-cache")
    os.makedirs(resumed)
    shutil.copytree(os.path.join(shared, "checkpoint-6"), os.path.join(resumed, "checkpoint-6"))
    resume = [*args, "--output_dir", resumed, "--resume_from_checkpoint", "latest", "--preprocess_cache"]
    outputs = run_two_nodes([[*resume, cache], [*resume, local_cache]], tmp_path, "resume")
    assert f"resumed from {resumed}/checkpoint-6 at step 6" in outputs[0]
    assert "caching pixels" not in outputs[0] and "caching pixels" in outputs[1], "node 1 had no cache of its own"
    assert len(cache_folders(local_cache)) == 1 and cache_folders(local_cache) == cache_folders(cache)
    assert_same_run(reference, resumed)


LOGGED_LOSS_SCRIPT = """
import os
import sys

import torch
from accelerate import Accelerator
from utils.run.distributed import leave_process_group
from utils.run.step_metrics import StepMetrics

accelerator = Accelerator(cpu=True)
metrics = StepMetrics(accelerator.device)
for loss in (1.0, 3.0):  # rank r's window: losses 1 + r and 3 + r, one gradient norm for all
    metrics.add(torch.tensor(loss + accelerator.process_index), torch.tensor(0.5))
with open(os.path.join(sys.argv[1], f"window{accelerator.process_index}.txt"), "w") as f:  # one file per rank:
    f.write(repr(metrics.read(accelerator)))                                                 # no interleaving
accelerator.wait_for_everyone()
leave_process_group()  # a clean exit: no gloo teardown abort at interpreter shutdown
"""


def test_logged_loss_is_the_mean_over_every_process(tmp_path):
    """utils/run/step_metrics: each rank's window mean differs (2 and 3); both log the global batch's 2.5."""
    script = tmp_path / "window.py"
    script.write_text(LOGGED_LOSS_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO}
    result = subprocess.run(torchrun(["--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port",
                                      free_port()], script, tmp_path, env=env),
                            cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    windows = [(tmp_path / f"window{rank}.txt").read_text() for rank in (0, 1)]
    assert windows == ["{'loss': 2.5, 'grad_norm': 0.5}"] * 2, windows
