"""Rare groups (issue 29): the long-tailed demo data, balanced sampling and loss reweighting, the evaluation's
training-share column. The measurements are benchmarks/long_tail.py's (docs/long_tail.md)."""

import os
import shutil

import numpy as np
import pytest

from conftest import TINY_MODEL_ARGS, parse_error
from test_resume import assert_bitwise_equal, run, weights
from utils.data import group_balance
from utils.data.fairface import EpochSampler, FairFaceImages, collate
from utils.evaluation.fidelity import groups_below_mean, training_shares
from utils.labels import AGES, NUM_CONDITIONS


def test_fairface_frequencies_give_exact_counts_and_the_long_tailed_demo_its_rarest_faces():
    shares = group_balance.condition_shares("fairface")
    assert shares.shape == (NUM_CONDITIONS,) and shares.sum() == pytest.approx(1.0)
    by_age = shares.reshape(len(AGES), -1).sum(1)
    assert by_age == pytest.approx(np.asarray(group_balance.FAIRFACE_TRAIN_COUNTS["age"]) / 86744)
    from utils.data.demo_data import LONG_TAILED_DEMO_IMAGES

    counts = group_balance.condition_counts(LONG_TAILED_DEMO_IMAGES, "fairface")
    assert counts.sum() == LONG_TAILED_DEMO_IMAGES and counts.min() >= 8  # the "at least 8"
    assert counts.reshape(len(AGES), -1).sum(1)[-1] == 156  # 70+: about 1 %
    assert list(group_balance.condition_counts(252, "uniform")) == [2] * NUM_CONDITIONS
    with pytest.raises(ValueError, match="1000 images with the 'fairface' distribution leave condition 123 without"):
        group_balance.condition_counts(1000, "fairface")


def test_balance_weights_make_groups_equally_likely_at_full_power_and_sqrt_halves_the_imbalance():
    attributes = np.array([[3, 0, 0]] * 90 + [[8, 1, 2]] * 10)  # 9:1
    full = group_balance.balance_weights(attributes, "age", 1.0)
    assert full.mean() == pytest.approx(1.0) and full[:90].sum() == pytest.approx(full[90:].sum())
    sqrt = group_balance.balance_weights(attributes, "age", 0.5)
    assert sqrt[:90].sum() / sqrt[90:].sum() == pytest.approx(3.0)  # sqrt(9)
    assert group_balance.balance_weights(attributes, "none", 1.0) is None
    assert group_balance.balance_weights(np.array([[3, 0, 0], [8, 1, 2]]), "age", 1.0) is None  # balanced already
    by_condition = group_balance.balance_weights(np.array([[0, 0, 0], [0, 0, 1], [0, 0, 1]]), "condition", 1.0)
    assert by_condition[0] == pytest.approx(2 * by_condition[1])


def test_balanced_epoch_order_is_deterministic_resumable_and_the_same_on_several_processes():
    attributes = np.array([[a, 0, 0] for a in [3] * 90 + [8] * 10])
    weights = group_balance.balance_weights(attributes, "age", 1.0)
    one = EpochSampler(100, seed=5, epoch=2, weights=weights).indices
    assert one == EpochSampler(100, seed=5, epoch=2, weights=weights).indices  # (seed, epoch) decides
    assert one != EpochSampler(100, seed=5, epoch=3, weights=weights).indices
    assert EpochSampler(100, seed=5, epoch=2, start=37, weights=weights).indices == one[37:]  # resume mid-epoch
    ranks = [EpochSampler(100, 5, 2, rank, 2, weights=weights).indices for rank in range(2)]
    assert [i for pair in zip(*ranks) for i in pair] == one  # two processes share out one process's order
    rare = np.mean([i >= 90 for epoch in range(20) for i in EpochSampler(100, 5, epoch, weights=weights).indices])
    assert 0.45 < rare < 0.55  # 10 % of the data, half of what is seen


def test_loss_balancing_weights_reach_the_batch():
    import datasets

    from utils.data.demo_data import draw_face

    rng = np.random.default_rng(0)
    images = [draw_face(a, 0, 0, rng, 16) for a in (3, 3, 3, 8)]
    dataset = datasets.Dataset.from_dict({"image": images, "age": [3, 3, 3, 8], "gender": [0] * 4, "race": [0] * 4})
    data = FairFaceImages(dataset, 16)
    data.loss_weights = group_balance.balance_weights(data.attributes, "age", 1.0)
    batch = collate([data[i] for i in range(4)], 16)
    assert batch["weights"].tolist() == pytest.approx([2 / 3, 2 / 3, 2 / 3, 2.0])


def test_demo_distribution_flag_errors():
    code, error = parse_error("train_fairface.py", "--demo_distribution", "fairface")
    assert code == 2 and "--demo_distribution chooses --demo's generated faces; add --demo" in error
    code, error = parse_error("train_fairface.py", "--balance_by", "decade")
    assert code == 2 and "invalid choice: 'decade'" in error


def test_long_tailed_demo_folder_has_the_counts_it_promises(tmp_path):
    from utils.data.demo_data import make_demo_dataset
    from utils.data.fairface import load_fairface

    folder = make_demo_dataset(str(tmp_path / "lt"), num_images=2100, resolution=16, distribution="fairface")
    dataset = load_fairface(folder)
    ids = np.asarray(dataset["age"]) * 14 + np.asarray(dataset["gender"]) * 7 + np.asarray(dataset["race"])
    assert np.bincount(ids, minlength=NUM_CONDITIONS).tolist() == \
        group_balance.condition_counts(2100, "fairface").tolist()
    assert "FairFace's own frequencies" in open(os.path.join(folder, "README.md")).read()


def test_training_shares_and_groups_below_the_mean():
    shares = training_shares(np.array([[0, 0, 0], [0, 1, 3], [8, 1, 3], [3, 0, 6]]))
    assert shares["by_age"]["0-2"] == 0.5 and shares["by_age"]["more than 70"] == 0.25
    assert shares["by_gender"] == {"Male": 0.5, "Female": 0.5}
    per_group = {"by_age": {"0-2": {"accuracy": 0.90, "count": 10}, "3-9": {"accuracy": 0.95, "count": 10},
                            "10-19": {"accuracy": 0.84, "count": 10}, "20-29": {"accuracy": None, "count": 0}}}
    assert groups_below_mean(per_group) == {"by_age": ["10-19"]}  # mean 0.8967: 10-19 is 5.7 points under


@pytest.mark.e2e
def test_balanced_run_resumes_exactly_and_refuses_another_balance(tmp_path):
    """A run balanced by age, resumed from its checkpoint-2 in another folder, ends bitwise where the straight run
    ended; a rerun with another --balance_by is refused by name."""
    from utils.data.demo_data import make_demo_dataset

    data = make_demo_dataset(str(tmp_path / "fairface"), num_images=48, resolution=32)
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"

    def args(out, *extra):
        return ["--dataset_name", data, "--output_dir", out, *TINY_MODEL_ARGS, "--block_out_channels", "16", "32",
                "--cross_attention_dim", "16", "--train_batch_size", "16", "--learning_rate", "1e-3",
                "--save_model_epochs", "100", "--save_images_epochs", "100", "--num_inference_steps", "2",
                "--max_train_steps", "4", "--checkpointing_steps", "2", "--balance_by", "age", "--balance_power", "1",
                *extra]

    log = run(args(straight), tmp_path / "straight.log")
    assert "images sampled by age frequency ** -1 (full)" in log
    os.makedirs(resumed)
    shutil.copytree(straight / "checkpoint-2", resumed / "checkpoint-2")
    run(args(resumed, "--resume_from_checkpoint", "latest"), tmp_path / "resumed.log")
    assert_bitwise_equal(weights(straight / "checkpoint-4", ("unet", "condition_encoder")),
                         weights(resumed / "checkpoint-4", ("unet", "condition_encoder")))
    from test_resume import finish, launch

    code, output = finish(launch(args(resumed, "--resume_from_checkpoint", "latest", "--balance_by", "condition"),
                                 tmp_path / "refused.log"))
    assert code == 2 and "it was trained with --balance_by age, now --balance_by condition" in output
