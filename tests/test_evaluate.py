"""evaluate_fairface.py end to end (tiny random CLIP/DINOv2/ViT, offline) and utils/evaluation/ against
hand-computed values (issue 8)."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from conftest import run_script
from utils import evaluation as ev
from utils.labels import AGES, RACES

EVAL_ARGS = ["--num_inference_steps", "4", "--device", "cpu", "--batch_size", "16", "--num_heldout", "40"]


# ------------------------------------------------------------------------------------------- tiny models
def _write_clip(folder):
    """A randomly initialised CLIP (32 px images) with a character-level BPE tokenizer written from scratch."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    # GPT-2/CLIP byte -> unicode table: every byte is one symbol, alone or word-final ("</w>"); no merges.
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), 256)]
    symbols = [chr(b) for b in printable] + [chr(256 + n) for n in range(256 - len(printable))]
    vocab = {s + suffix: i for i, (suffix, s) in enumerate((x, s) for x in ("", "</w>") for s in symbols)}
    vocab.update({"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1})
    os.makedirs(folder)
    with open(os.path.join(folder, "vocab.json"), "w") as f:
        json.dump(vocab, f)
    with open(os.path.join(folder, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n")
    tokenizer = CLIPTokenizer.from_pretrained(folder, model_max_length=96)
    torch.manual_seed(0)
    special = dict(bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
                   pad_token_id=vocab["<|endoftext|>"])
    model = CLIPModel(CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=96, **special),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8), projection_dim=16))
    processor = CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32},
                                                                 crop_size={"height": 32, "width": 32}),
                              tokenizer=tokenizer)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)


def _write_dinov2(folder):
    import torch
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    Dinov2Model(Dinov2Config(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                             intermediate_size=64)).save_pretrained(folder)
    BitImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)


def _write_gender_vit(folder):
    """An image-classification checkpoint whose labels are spelled differently from ours ("female" first)."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(0)
    ViTForImageClassification(ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, intermediate_size=64,
                                         id2label={0: "female", 1: "male"}, label2id={"female": 0, "male": 1})
                              ).save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)


@pytest.fixture(scope="module")
def evaluation(tiny_run, demo_dataset, tiny_models, tmp_path_factory):
    """One sampled evaluation: 3 conditions x 2 images from the tiny run, against the demo dataset."""
    output_dir = str(tmp_path_factory.mktemp("evaluation") / "eval")
    result = run_script("evaluate_fairface.py", "--model", tiny_run, "--dataset_name", demo_dataset,
                        "--classifier", tiny_models["clip"], "--feature_model", tiny_models["dinov2"],
                        "--conditions", "0", "42", "125", "--num_images_per_condition", "2", "--output_dir",
                        output_dir, *EVAL_ARGS)
    with open(os.path.join(output_dir, "metrics.json")) as f:
        return output_dir, json.load(f), result.stdout


def _assert_png(path):
    with Image.open(path) as image:
        assert image.format == "PNG" and min(image.size) > 20
        image.verify()


# --------------------------------------------------------------------------------------------- end to end
@pytest.mark.e2e
def test_sampled_evaluation_writes_metrics_report_and_plots(evaluation):
    output_dir, metrics, stdout = evaluation
    assert metrics["counts"]["generated"] == 6 and metrics["counts"]["conditions"] == 3
    assert metrics["counts"]["real"] >= 3 and metrics["counts"]["train_pool"] == 504
    for side in ("generated", "real"):
        accuracy = metrics["fidelity"][side]["accuracy"]
        assert set(accuracy) == {"age", "gender", "race", "all"}
        assert all(0.0 <= v <= 1.0 for v in accuracy.values())
        per_race = metrics["fidelity"][side]["per_group"]["race"]["by_race"]
        assert set(per_race) == set(RACES)
        assert per_race["East Asian"]["count"] >= 1 and per_race["Indian"]["count"] == 0  # ids 0, 42: East Asian
        assert np.asarray(metrics["fidelity"][side]["confusion"]["age"]).shape == (9, 9)
        assert np.asarray(metrics["fidelity"][side]["confusion"]["gender"]).sum() == metrics["counts"][side]
    assert sorted(metrics["fidelity"]["generated"]["per_condition"]) == ["0", "125", "42"]
    assert metrics["frechet_distance"]["overall"] >= 0
    assert metrics["frechet_distance"]["by_age"]["0-2"]["generated"] == 2  # condition 0
    assert metrics["frechet_distance"]["by_age"]["30-39"]["frechet_distance"] is None  # no images: undefined
    assert metrics["frechet_distance"]["by_race"]["East Asian"]["frechet_distance"] >= 0
    assert set(metrics["diversity"]["generated"]["per_condition"]) == {"0", "42", "125"}
    memo = metrics["memorisation"]
    assert 0.0 <= memo["share"] <= 1.0 and memo["threshold"] >= 0 and memo["expected_share"] == 0.05
    assert memo["reference"] == 40 and "leave-one-out" in memo["reference_kind"]
    assert len(memo["closest_pairs"]) == 6
    assert metrics["settings"]["guidance_scale"] == 2.0 and metrics["settings"]["resolution"] == 32
    report = open(os.path.join(output_dir, "report.md")).read()
    assert "## Attribute fidelity" in report and "Fréchet" in report and "Memorisation" in report
    assert "Perceived, coarse labels" in report
    for name in ("accuracy_by_age", "accuracy_by_gender", "accuracy_by_race", "confusion_age", "confusion_gender",
                 "confusion_race", "frechet_by_group", "nearest_neighbours"):
        _assert_png(os.path.join(output_dir, f"{name}.png"))
    samples = sorted(os.listdir(os.path.join(output_dir, "samples")))
    assert samples[0] == "cond000_0-2_male_east-asian_seed0000.png" and len(samples) == 6
    assert len(open(os.path.join(output_dir, "per_image.csv")).read().strip().splitlines()) == 7
    assert "accuracy: age" in stdout


@pytest.mark.e2e
def test_samples_are_seeded_per_image(evaluation, tiny_run):
    """Image k of a condition is the pipeline's image for seed k: reproducible outside this script."""
    from utils.labels import decode_condition
    from utils.model.pipeline import generate, load_pipeline

    output_dir, _, _ = evaluation
    again = generate(load_pipeline(tiny_run), [decode_condition(42)], [1], num_inference_steps=4, guidance_scale=2.0)[0]
    saved = np.asarray(Image.open(os.path.join(output_dir, "samples", "cond042_20-29_male_east-asian_seed0001.png")))
    assert np.abs(np.asarray(again, dtype=np.int16) - saved).max() <= 1


@pytest.mark.e2e
def test_samples_dir_reuse_with_image_classifier_and_heldout_split(evaluation, demo_dataset, tiny_models, tmp_path):
    """Reuses saved images (a subset of their conditions), a FairFace-label classifier for gender, a held-out
    split as memorisation reference, and a data-loader worker decoding the training pool."""
    output_dir, first, _ = evaluation
    run_script("evaluate_fairface.py", "--samples_dir", os.path.join(output_dir, "samples"), "--conditions", "0", "42",
               "--dataset_name", demo_dataset, "--classifier", tiny_models["clip"], "--gender_classifier",
               tiny_models["gender_vit"], "--feature_model", tiny_models["dinov2"], "--train_splits", "train",
               "--heldout_split", "validation", "--dataloader_num_workers", "1", "--output_dir", tmp_path / "again",
               *EVAL_ARGS)
    metrics = json.loads((tmp_path / "again" / "metrics.json").read_text())
    assert metrics["counts"]["generated"] == 4 and metrics["counts"]["conditions"] == 2
    assert metrics["classifiers"]["gender"].endswith("(image classifier)")
    assert metrics["classifiers"]["age"].endswith("(zero-shot CLIP)")
    assert metrics["counts"]["train_pool"] == 404  # the two train splits (202 each; 50 + 50 validation)
    assert "held-out split 'validation'" in metrics["memorisation"]["reference_kind"]
    # The same images and CLIP: age and race predictions are unchanged for the conditions kept.
    for c in ("0", "42"):
        assert metrics["fidelity"]["generated"]["per_condition"][c]["count"] == 2
    race_confusion = [m["fidelity"]["generated"]["confusion"]["race"] for m in (metrics, first)]
    assert race_confusion[0][0] == race_confusion[1][0]  # East Asian row: conditions 0 and 42 in both runs
    _assert_png(tmp_path / "again" / "nearest_neighbours.png")


@pytest.mark.parametrize("flag,value,message", [
    ("--classifier", "{tmp}/no-such-clip", "cannot load classifier '{tmp}/no-such-clip': no such folder"),
    ("--feature_model", "nobody/no-such-dinov2", "cannot load feature model 'nobody/no-such-dinov2': "),
    ("--model", "{tmp}/no-such-run", "no model at '{tmp}/no-such-run'"),
    ("--dataset_name", "nobody/no-such-fairface", "cannot load dataset 'nobody/no-such-fairface': "),
])
def test_missing_models_and_data_are_one_line_errors(flag, value, message, tiny_models, tmp_path, capsys):
    """Checked before any sampling; in-process (fast): a traceback would fail the test, SystemExit(2) is fail()."""
    import evaluate_fairface

    args = {"--classifier": tiny_models["clip"], "--feature_model": tiny_models["dinov2"], "--model": "unused",
            "--samples_dir": str(tmp_path)}
    args[flag] = value.format(tmp=tmp_path)
    if flag == "--model":
        del args["--samples_dir"]
    with pytest.raises(SystemExit) as exit_info:
        evaluate_fairface.main(evaluate_fairface.parse_args([x for kv in args.items() for x in kv]
                                                            + ["--output_dir", str(tmp_path / "out")]))
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "error: " + message.format(tmp=tmp_path) in error


@pytest.mark.e2e
def test_per_framing_accuracy_and_frechet_distance(tiny_run, demo_dataset, tiny_models, tmp_path):
    """--framing tight wide: every condition sampled in both framings, each against real images of its config."""
    output_dir = tmp_path / "eval"
    run_script("evaluate_fairface.py", "--model", tiny_run, "--dataset_name", demo_dataset, "--classifier",
               tiny_models["clip"], "--feature_model", tiny_models["dinov2"], "--conditions", "0", "42",
               "--num_images_per_condition", "2", "--framing", "tight", "wide", "--output_dir", output_dir, *EVAL_ARGS)
    metrics = json.loads((output_dir / "metrics.json").read_text())
    assert metrics["counts"]["generated"] == 8 and set(metrics["by_framing"]) == {"tight", "wide"}
    for framing, values in metrics["by_framing"].items():
        # real: up to 2 per condition from its config; the demo set has conditions 0 and 42 once each in 1.25
        assert values["generated"] == 4 and values["real"] == {"tight": 4, "wide": 2}[framing]
        assert set(values["fidelity"]["generated"]["accuracy"]) >= {"age", "gender", "race", "all"}
        assert values["frechet_distance"] is None or values["frechet_distance"] >= 0
        assert sorted(name for name in os.listdir(output_dir / "samples") if f"_{framing}_" in name) == [
            f"cond{c:03d}_{slug}_{framing}_seed{s:04d}.png" for c, slug in ((0, "0-2_male_east-asian"),
                                                                           (42, "20-29_male_east-asian"))
            for s in (0, 1)]
    assert "## Per framing" in (output_dir / "report.md").read_text()


class _WritesMarkerWhenUnpickled:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickled_classifier_weights_are_refused_never_unpickled(tiny_models, tmp_path, capsys):
    """A classifier folder with only a .bin (here a pickle that would create a file when loaded) is refused."""
    import pickle
    import shutil

    import evaluate_fairface

    folder = tmp_path / "pickled_vit"
    shutil.copytree(tiny_models["gender_vit"], folder)
    for name in os.listdir(folder):
        if name.endswith(".safetensors"):
            os.remove(folder / name)
    marker = tmp_path / "unpickled"
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(_WritesMarkerWhenUnpickled(str(marker))))
    with pytest.raises(SystemExit) as exit_info:
        evaluate_fairface.main(evaluate_fairface.parse_args(
            ["--samples_dir", str(tmp_path), "--gender_classifier", str(folder), "--classifier", tiny_models["clip"],
             "--feature_model", tiny_models["dinov2"], "--output_dir", str(tmp_path / "out")]))
    assert exit_info.value.code == 2 and not marker.exists()
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"cannot load gender classifier '{folder}': {folder} holds only pickled weights" in error


# ------------------------------------------------------------------------------------------- Fréchet distance
def test_frechet_distance_one_dimensional_closed_form():
    # (mu1 - mu2)^2 + s1 + s2 - 2 sqrt(s1 s2) = 4 + 4 + 1 - 2 * 2 = 5
    assert ev.frechet_distance([1.0], [[4.0]], [3.0], [[1.0]]) == pytest.approx(5.0)
    assert ev.frechet_distance([0.0], [[2.0]], [0.0], [[2.0]]) == pytest.approx(0.0, abs=1e-9)


def test_frechet_distance_diagonal_covariances_closed_form():
    mu1, mu2 = np.array([0.0, 1.0, -2.0]), np.array([1.0, 1.0, 0.0])
    var1, var2 = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 0.25])
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(var1) - np.sqrt(var2)) ** 2)  # 5 + (1 + 1 + 6.25)
    assert ev.frechet_distance(mu1, np.diag(var1), mu2, np.diag(var2)) == pytest.approx(expected) == 13.25


def test_frechet_distance_between_feature_sets():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(300, 6))
    assert ev.frechet_distance_between(a, a) == pytest.approx(0.0, abs=1e-6)
    assert ev.frechet_distance_between(a, a + 2.0) == pytest.approx(6 * 4.0, rel=1e-6)  # shifted: |mu diff|^2 only
    x, y = rng.normal(1, 2, size=(50, 1)), rng.normal(-1, 0.5, size=(70, 1))
    s1, s2 = x.var(ddof=1), y.var(ddof=1)
    expected = (x.mean() - y.mean()) ** 2 + s1 + s2 - 2 * np.sqrt(s1 * s2)
    assert ev.frechet_distance_between(x, y) == pytest.approx(expected)
    assert ev.frechet_distance_between(a[:1], a) is None


def test_frechet_distance_with_singular_covariances_is_finite():
    rng = np.random.default_rng(1)
    few = rng.normal(size=(4, 16))  # rank 3 covariances in 16 dimensions
    other = rng.normal(size=(5, 16)) + 0.5
    value = ev.frechet_distance_between(few, other)
    assert np.isfinite(value) and value > 0
    assert ev.frechet_distance_between(few, few) == pytest.approx(0.0, abs=1e-3)


# ------------------------------------------------------------------------------------------------- fidelity
def test_accuracy_and_confusion_matrix():
    true, predicted = [0, 0, 1, 1, 2], [0, 1, 1, 1, 0]
    assert ev.accuracy(true, predicted) == pytest.approx(3 / 5)
    assert ev.confusion_matrix(true, predicted, 3).tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    assert np.isnan(ev.accuracy([], []))


def test_group_accuracy():
    values, counts = ev.group_accuracy([True, False, True, True], [0, 0, 1, 1], 3)
    assert values[:2].tolist() == [0.5, 1.0] and np.isnan(values[2]) and counts.tolist() == [2, 2, 0]


def test_fidelity_metrics_by_hand():
    # 42 = (20-29, Male, East Asian), 58 = (30-39, Male, Black)
    conditions = np.array([42, 42, 58, 58])
    true = ev.attribute_arrays(conditions)
    predicted = {"age": np.array([3, 4, 4, 4]), "gender": np.array([0, 0, 1, 0]), "race": np.array([0, 0, 2, 3])}
    m = ev.fidelity_metrics(true, predicted, conditions)
    assert m["accuracy"] == {"age": 0.75, "gender": 0.75, "race": 0.75, "all": 0.25}
    assert m["per_group"]["race"]["by_race"]["Black"] == {"accuracy": 0.5, "count": 2}
    assert m["per_group"]["race"]["by_race"]["East Asian"] == {"accuracy": 1.0, "count": 2}
    assert m["per_group"]["race"]["by_race"]["White"] == {"accuracy": None, "count": 0}
    assert m["per_group"]["age"]["by_age"]["20-29"]["accuracy"] == 0.5
    assert m["per_group"]["gender"]["by_gender"]["Male"] == {"accuracy": 0.75, "count": 4}
    assert m["per_group"]["all"]["by_age"]["30-39"]["accuracy"] == 0.0
    assert m["per_condition"] == {"42": {"accuracy": 0.5, "count": 2}, "58": {"accuracy": 0.0, "count": 2}}
    confusion = np.asarray(m["confusion"]["age"])
    assert confusion.shape == (9, 9) and confusion[3, 3] == 1 and confusion[3, 4] == 1 and confusion[4, 4] == 2


def test_label_mapping_from_classifier_id2label():
    assert ev.label_mapping({0: "Male", 1: "Female"}, "gender").tolist() == [0, 1]
    assert ev.label_mapping({"0": "woman", "1": "man"}, "gender").tolist() == [1, 0]
    ages = dict(enumerate(["0-2", "3-9", "10-19", "20-29", "30-39", "40-49", "50-59", "60-69", "70+"]))
    assert ev.label_mapping(ages, "age").tolist() == list(range(len(AGES)))
    races = {0: "White", 1: "Black", 2: "Latino Hispanic", 3: "East Asian", 4: "Southeast Asian", 5: "Indian",
             6: "Middle Eastern"}
    assert ev.label_mapping(races, "race").tolist() == [3, 2, 5, 0, 6, 1, 4]
    with pytest.raises(ValueError, match="'LABEL_0', 'LABEL_1'"):
        ev.label_mapping({0: "LABEL_0", 1: "LABEL_1"}, "gender")
    with pytest.raises(ValueError, match="'Asian'"):
        ev.label_mapping({0: "White", 1: "Asian"}, "race")
    with pytest.raises(ValueError, match="'0'"):
        ev.label_mapping({0: "0", 1: "1"}, "age")  # bare numbers say nothing about the label


# ------------------------------------------------------------------------------- diversity, memorisation, files
def test_diversity_is_mean_pairwise_cosine_distance():
    assert ev.mean_pairwise_cosine_distance(np.array([[1.0, 0], [0, 2.0], [3.0, 0]])) == pytest.approx(2 / 3)
    assert ev.mean_pairwise_cosine_distance(np.ones((1, 2))) is None
    per_condition = ev.diversity_by_condition(np.array([[1.0, 0], [0, 1.0], [1.0, 0], [1.0, 0], [5, 5]]),
                                              [42, 42, 58, 58, 7])
    assert per_condition == pytest.approx({42: 1.0, 58: 0.0})
    summary = ev.summarise_diversity(per_condition)
    assert summary["mean"] == pytest.approx(0.5) and summary["by_race"]["East Asian"] == pytest.approx(1.0)
    assert summary["by_gender"]["Male"] == pytest.approx(0.5) and summary["by_gender"]["Female"] is None


def test_nearest_neighbours_with_exclusions_and_memorisation_share():
    pool = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.8], [np.nan, np.nan]])  # the NaN row: an unusable image
    distances, indices = ev.nearest_neighbours(np.array([[2.0, 0.1], [1.0, 0.8], [np.nan, 1.0]]), pool)
    assert indices.tolist() == [0, 2, -1] and distances[1] == pytest.approx(0.0, abs=1e-6) and np.isnan(distances[2])
    distances, indices = ev.nearest_neighbours(pool[:3], pool, exclude=[[0], [1], [2]])  # leave-one-out
    assert indices.tolist() == [2, 2, 0]
    assert distances[0] == pytest.approx(1 - 1 / np.sqrt(1.64), abs=1e-6)
    memo = ev.memorisation([0.01, 0.2, 0.3, 0.02], np.linspace(0.1, 0.5, 101), percentile=5)
    assert memo["threshold"] == pytest.approx(0.12)  # 5th percentile of 0.100, 0.104, ..., 0.5
    assert memo["share"] == 0.5 and memo["expected_share"] == 0.05


def test_sample_files_are_found_by_condition_id(tmp_path):
    for name in ("cond042_20-29_male_east-asian_seed0003.png", "grid_cond7.jpg", "cond125_x.png", "cond126.png",
                 "notes.txt", "cond0420.png", "sample.png"):
        Image.new("RGB", (8, 8)).save(tmp_path / name) if name.endswith((".png", ".jpg")) else (tmp_path / name).touch()
    found = ev.find_samples(tmp_path)
    assert [(os.path.basename(p), c, s) for p, c, s in found] == [
        ("grid_cond7.jpg", 7, None), ("cond042_20-29_male_east-asian_seed0003.png", 42, 3),
        ("cond125_x.png", 125, None)]
    assert [c for _, c, _ in ev.find_samples(tmp_path, [42])] == [42]


def test_real_pool_treats_the_other_padding_as_the_same_photo():
    import datasets

    def part(ages):
        return datasets.Dataset.from_dict({"image": [None] * len(ages), "age": ages, "gender": [0] * len(ages),
                                           "race": [1] * len(ages)})

    pool = ev.RealPool([(("0.25", "train"), part([1, 2, 3])), (("1.25", "train"), part([1, 2, 3])),
                        (("0.25", "validation"), part([1, 2, 3])), (("1.25", "validation"), part([3, 2, 1]))])
    assert pool.aligned == [(("0.25", "train"), ("1.25", "train"))]
    assert pool.keys[0] == pool.keys[3] and pool.keys[1] == pool.keys[4]
    assert len(set(pool.keys[6:].tolist())) == 6 and not set(pool.keys[6:]) & set(pool.keys[:6])
    assert pool.condition_ids.tolist()[:3] == [14 + 1, 28 + 1, 42 + 1] and pool.source(4) == "1.25/train#1"
    picked = ev.sample_per_condition(pool.condition_ids, [15, 43, 100], 5, np.random.default_rng(0))
    assert sorted(pool.condition_ids[picked].tolist()) == [15] * 4 + [43] * 4  # all 4 of each; none of 100
    assert len(set(picked.tolist())) == 8
