"""The uint8 pixel cache (utils.data.pixel_cache.build_pixel_cache): exact pixels, keyed invalidation, reuse, safe builds (issue 7)."""

import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO
from utils.data import fairface, pixel_cache

RESOLUTION = 24  # not the stored 32 px: the cache must hold resized pixels, exactly as decode_image makes them


@pytest.fixture(scope="module")
def odd_dataset(tmp_path_factory):
    """40 faces plus the 14 odd records (7 unusable, 7 in unusual modes) of make_demo_dataset(broken_images=True)."""
    from utils.data.demo_data import make_demo_dataset

    return make_demo_dataset(str(tmp_path_factory.mktemp("data") / "odd"), num_images=40, resolution=32,
                             broken_images=True)


def test_cached_pixels_equal_decoded_ones_for_every_record(odd_dataset, tmp_path):
    from utils.data.demo_data import BROKEN_RECORDS_SKIPPED

    dataset = fairface.load_fairface(odd_dataset)
    cache = pixel_cache.build_pixel_cache(dataset, str(tmp_path), RESOLUTION, progress=False)
    assert cache["pixels"].shape == (len(dataset), RESOLUTION, RESOLUTION, 3) and cache["pixels"].dtype == np.uint8
    assert isinstance(cache["pixels"], np.memmap)
    assert cache["meta"] == {"count": len(dataset), "resolution": RESOLUTION, "skipped": BROKEN_RECORDS_SKIPPED}
    cached, direct = fairface.FairFaceImages(dataset, RESOLUTION, cache), fairface.FairFaceImages(dataset, RESOLUTION)
    for index in range(len(dataset)):
        expected = fairface.decode_image(dataset[index]["image"], RESOLUTION)
        assert bool(cache["valid"][index]) == (expected is not None), index
        if expected is None:
            assert cached[index]["pixels"] is None and direct[index]["pixels"] is None
            continue
        np.testing.assert_array_equal(cache["pixels"][index], expected, err_msg=f"record {index}")
        assert cached[index]["pixels"].equal(direct[index]["pixels"]), index  # both item paths agree
        assert cached[index]["attributes"].equal(direct[index]["attributes"])


def test_cache_key_changes_with_resolution_configs_and_splits(demo_dataset, tmp_path):
    root = str(tmp_path)
    full = fairface.load_fairface(demo_dataset)
    folders = {
        "full@16": pixel_cache.build_pixel_cache(full, root, 16, progress=False)["folder"],
        "full@24": pixel_cache.build_pixel_cache(full, root, 24, progress=False)["folder"],
        "0.25@16": pixel_cache.build_pixel_cache(fairface.load_fairface(demo_dataset, ["0.25"]), root, 16, progress=False)["folder"],
        "train@16": pixel_cache.build_pixel_cache(fairface.load_fairface(demo_dataset, splits=["train"]), root, 16,
                                           progress=False)["folder"],
    }
    assert len(set(folders.values())) == 4, folders  # each selection/resolution gets its own folder
    for name, folder in folders.items():
        cache = pixel_cache.load_pixel_cache(folder)
        assert cache["meta"]["resolution"] == int(name.split("@")[1])
    assert pixel_cache.load_pixel_cache(folders["0.25@16"])["meta"]["count"] == len(fairface.load_fairface(demo_dataset, ["0.25"]))
    assert pixel_cache.load_pixel_cache(folders["train@16"])["meta"]["count"] == len(
        fairface.load_fairface(demo_dataset, splits=["train"]))


def test_unchanged_selection_reuses_the_cache_without_rebuilding(demo_dataset, tmp_path, monkeypatch):
    root = str(tmp_path)
    first = pixel_cache.build_pixel_cache(fairface.load_fairface(demo_dataset), root, 16, progress=False)
    pixels_file = os.path.join(first["folder"], "pixels.npy")
    stamp = os.stat(pixels_file).st_mtime_ns

    def no_decoding(*args, **kwargs):
        raise AssertionError("the cache was rebuilt although nothing changed")

    open_memmap = np.lib.format.open_memmap

    def read_only_memmap(*args, mode="r+", **kwargs):
        if mode.startswith("w"):
            no_decoding()
        return open_memmap(*args, mode=mode, **kwargs)

    monkeypatch.setattr(fairface, "decode_image", no_decoding)
    monkeypatch.setattr(np.lib.format, "open_memmap", read_only_memmap)
    again = pixel_cache.build_pixel_cache(fairface.load_fairface(demo_dataset), root, 16, progress=False)  # a fresh load
    assert again["folder"] == first["folder"]
    assert os.stat(pixels_file).st_mtime_ns == stamp
    np.testing.assert_array_equal(again["pixels"], first["pixels"])
    assert os.listdir(root) == [os.path.basename(first["folder"])]


@pytest.mark.e2e
def test_cache_key_is_stable_across_processes(demo_dataset):
    """A second run (another process) of the same command must find the first run's cache."""
    here = pixel_cache.cache_key(fairface.load_fairface(demo_dataset), 16)
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from utils.data import fairface, pixel_cache; "
            "print(pixel_cache.cache_key(fairface.load_fairface(sys.argv[2]), 16))")
    there = subprocess.run([sys.executable, "-c", code, REPO, demo_dataset], capture_output=True, text=True,
                           check=True, env=os.environ).stdout.strip().splitlines()[-1]
    assert there == here


def test_interrupted_build_is_never_used(demo_dataset, tmp_path, monkeypatch):
    root = str(tmp_path)
    dataset = fairface.load_fairface(demo_dataset)
    decode, calls = fairface.decode_image, []

    def interrupted(record, resolution):
        calls.append(1)
        if len(calls) > 100:
            raise KeyboardInterrupt  # Ctrl-C / a kill in the middle of the build
        return decode(record, resolution)

    monkeypatch.setattr(fairface, "decode_image", interrupted)
    with pytest.raises(KeyboardInterrupt):
        pixel_cache.build_pixel_cache(dataset, root, 16, progress=False)
    leftovers = os.listdir(root)  # only the temporary folder and its lock file, never the final name
    assert len(leftovers) == 2 and all(".tmp-" in name for name in leftovers), leftovers
    (leftover,) = [name for name in leftovers if os.path.isdir(os.path.join(root, name))]
    # Even a temporary folder that looks complete (meta.json written, rename not done) must not be picked up.
    with open(os.path.join(root, leftover, "meta.json"), "w") as f:
        f.write('{"count": 504, "resolution": 16, "skipped": 0}')
    monkeypatch.setattr(fairface, "decode_image", decode)
    cache = pixel_cache.build_pixel_cache(dataset, root, 16, progress=False)
    assert ".tmp" not in os.path.basename(cache["folder"]) and os.path.isfile(os.path.join(cache["folder"], "meta.json"))
    assert cache["valid"].all() and cache["meta"]["count"] == len(dataset)
    assert os.listdir(root) == [os.path.basename(cache["folder"])], "the dead build's leftovers were not removed"
    for index in (0, 150, len(dataset) - 1):  # past the interruption point: really decoded, not zeros
        np.testing.assert_array_equal(cache["pixels"][index], decode(dataset[index]["image"], 16))
