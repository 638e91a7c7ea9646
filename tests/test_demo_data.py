"""Synthetic FairFace: drawings read back from pixels, and the folder loads like the Hub dataset."""

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from utils.data.demo_data import (BROKEN_RECORDS_SKIPPED, CONFIG_ZOOM, ODD_RECORDS_ADDED, ODD_RECORDS_CONVERTIBLE,
                                  draw_face, make_demo_dataset, measure_attributes, measure_framing)
from utils.labels import AGES, GENDERS, NUM_CONDITIONS, RACES, decode_condition, encode_condition

datasets = pytest.importorskip("datasets")


@pytest.fixture(autouse=True)
def isolated_hf_cache(tmp_path, monkeypatch):
    """Keep the real Hugging Face caches untouched (datasets reads its config at import, so patch both)."""
    cache = tmp_path / "hf_cache"
    monkeypatch.setenv("HF_HOME", str(cache))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(cache / "datasets"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache / "datasets", raising=False)
    return cache / "datasets"


def _faces(resolution=64, zoom=1.0, seed=1, repeats=4):
    """Every one of the 126 conditions ``repeats`` times (504 faces), with their (N, 3) labels."""
    rng = np.random.default_rng(seed)
    labels = np.array([decode_condition(c) for c in range(NUM_CONDITIONS)] * repeats)
    return [draw_face(*row, rng, resolution, zoom=zoom) for row in labels], labels


def _recovery(images, labels):
    measured = measure_attributes(images)
    return {name: float(np.mean(measured[name] == labels[:, i])) for i, name in enumerate(("age", "gender", "race"))}


def _degrade(image, rng, sigma=8.0, blur=0.6):
    blurred = image.filter(ImageFilter.GaussianBlur(blur * image.width / 64))
    noisy = np.asarray(blurred, dtype=np.float64) + rng.normal(0.0, sigma, (image.height, image.width, 3))
    return np.clip(np.round(noisy), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("zoom", [CONFIG_ZOOM["0.25"], CONFIG_ZOOM["1.25"]])
def test_measure_attributes_recovers_drawn_attributes(zoom):
    """The same regions read both configs' layouts: a model's sample may be drawn in either."""
    faces, labels = _faces(zoom=zoom)
    assert min(_recovery(faces, labels).values()) >= 0.99
    small = [face.resize((32, 32), Image.Resampling.BICUBIC) for face in faces]
    assert min(_recovery(small, labels).values()) >= 0.98
    rng = np.random.default_rng(2)
    for images in (faces, small):  # noise sigma 8/255 and a slight blur, at 64 and 32 px
        noisy = np.stack([_degrade(image, rng) for image in images])
        assert min(_recovery(noisy, labels).values()) >= 0.95


@pytest.mark.parametrize("config, framing", [("0.25", 0), ("1.25", 1)])
def test_measure_framing_tells_the_two_layouts_apart(config, framing):
    """Tight ("0.25") and wide ("1.25") read back from pixels: at 64 and 32 px, also blurred and noisy."""
    faces, _ = _faces(zoom=CONFIG_ZOOM[config], repeats=2)
    small = [face.resize((32, 32), Image.Resampling.BICUBIC) for face in faces]
    rng = np.random.default_rng(4)
    for images in (faces, small, [_degrade(image, rng, sigma=12.0, blur=1.0) for image in faces + small]):
        assert np.array_equal(measure_framing(images), np.full(len(images), framing))


def test_faces_drawn_at_32px_are_measurable_and_vary():
    faces, labels = _faces(resolution=32, repeats=1)
    assert faces[0].mode == "RGB" and faces[0].size == (32, 32)
    assert min(_recovery(faces, labels).values()) >= 0.99
    rng_a, rng_b = np.random.default_rng(0), np.random.default_rng(1)
    a, b = (np.asarray(draw_face(4, 1, 2, rng, 64)) for rng in (rng_a, rng_b))
    assert np.any(a != b), "per-image jitter should make two draws of one condition differ"
    again = np.asarray(draw_face(4, 1, 2, np.random.default_rng(0), 64))
    assert np.array_equal(a, again), "same rng state, same face"


def test_measure_attributes_accepts_arrays_and_any_size():
    faces, labels = _faces(repeats=1)
    array = np.stack([np.asarray(face.resize((48, 48))) for face in faces[:20]])
    measured = measure_attributes(array)
    assert set(measured) == {"age", "gender", "race"} and measured["age"].shape == (20,)
    assert np.array_equal(measured["race"], labels[:20, 2])


def _load(folder, config, split):
    return datasets.load_dataset(str(folder), config, split=split)


def test_demo_dataset_loads_like_fairface(tmp_path):
    folder = make_demo_dataset(tmp_path / "fairface", num_images=300, resolution=32, seed=3)
    readme = (tmp_path / "fairface" / "README.md").read_text()
    assert readme.startswith("---\n") and "config_name: '0.25'" in readme and "config_name: '1.25'" in readme
    total, conditions = 0, []
    for config in ("0.25", "1.25"):
        for split in ("train", "validation"):
            part = _load(folder, config, split)
            assert list(part.column_names) == ["image", "age", "gender", "race", "service_test"]
            for name, names in (("age", AGES), ("gender", GENDERS), ("race", RACES)):
                assert isinstance(part.features[name], datasets.ClassLabel)
                assert tuple(part.features[name].names) == names
            assert isinstance(part.features["image"], datasets.Image)
            assert part.features["service_test"].dtype == "bool"
            image = part[0]["image"]
            assert image.size == (32, 32)
            measured = measure_attributes([image])
            assert [int(measured[k][0]) for k in ("age", "gender", "race")] == [part[0][k] for k in
                                                                                ("age", "gender", "race")]
            total += len(part)
            conditions += [encode_condition(*row) for row in zip(part["age"], part["gender"], part["race"])]
    assert total == 300
    counts = np.bincount(conditions, minlength=NUM_CONDITIONS)
    assert counts.max() - counts.min() <= 1, "conditions should be balanced over the whole set"


def test_all_conditions_present_and_deterministic(tmp_path):
    first = make_demo_dataset(tmp_path / "a", num_images=504, resolution=16, seed=5)
    second = make_demo_dataset(tmp_path / "b", num_images=504, resolution=16, seed=5)
    merged = datasets.concatenate_datasets([_load(first, c, s) for c in ("0.25", "1.25")
                                            for s in ("train", "validation")])
    ids = {encode_condition(*row) for row in zip(merged["age"], merged["gender"], merged["race"])}
    assert len(merged) == 504 and ids == set(range(NUM_CONDITIONS))
    for name in ("0.25/train-00000-of-00001.parquet", "1.25/validation-00000-of-00001.parquet"):
        assert Path(first, name).read_bytes() == Path(second, name).read_bytes()


def test_broken_images_are_added_and_the_dataset_still_loads(tmp_path):
    folder = make_demo_dataset(tmp_path / "broken", num_images=120, resolution=32, seed=0, broken_images=True)
    parts = {(c, s): _load(folder, c, s) for c in ("0.25", "1.25") for s in ("train", "validation")}
    assert sum(len(p) for p in parts.values()) == 120 + ODD_RECORDS_ADDED
    raw = parts["0.25", "train"].cast_column("image", datasets.Image(decode=False))
    usable = 0
    for record in raw["image"]:  # decode the way the training loader does: tolerant, size-limited
        try:
            image = Image.open(io.BytesIO(record["bytes"]))
            if min(image.size) < 16 or image.width * image.height > 4096 * 4096:
                continue
            image.load()
            image.convert("RGB")
            usable += 1
        except Exception:  # noqa: BLE001 - a broken record
            continue
    assert len(raw) - usable == BROKEN_RECORDS_SKIPPED
    assert usable == len(raw) - ODD_RECORDS_ADDED + ODD_RECORDS_CONVERTIBLE
    modes = set()
    for record in raw["image"]:
        try:
            modes.add(Image.open(io.BytesIO(record["bytes"])).mode)
        except Exception:  # noqa: BLE001
            pass
    assert {"CMYK", "P", "LA", "I;16", "1", "RGBA", "L", "RGB"} <= modes
    for config, split in [("0.25", "validation"), ("1.25", "train"), ("1.25", "validation")]:
        assert all(record is not None for record in parts[config, split]["image"])


def test_label_names_override_writes_a_mislabelled_copy(tmp_path):
    shuffled = list(reversed(RACES))
    folder = make_demo_dataset(tmp_path / "mislabelled", num_images=40, resolution=16, label_names={"race": shuffled})
    part = _load(folder, "0.25", "train")
    assert part.features["race"].names == shuffled
    assert tuple(part.features["age"].names) == AGES
    with pytest.raises(ValueError):
        make_demo_dataset(tmp_path / "bad", num_images=40, resolution=16, label_names={"race": ["only one"]})
