"""The pixel cache: every image decoded, converted and resized once into a memory-mapped uint8 array.

>=10x faster epochs than decoding JPEGs each step (benchmarks/data_loading.py). Keyed by the merged dataset's
fingerprint and the resolution; an interrupted build is never used (only the final rename completes it), and
several processes of one machine share a build, one part each (utils/run/run_setup.py assembles them).
"""

import contextlib
import hashlib
import json
import os
import shutil

import numpy as np
import torch

from ..files import file_locks
from ..files.atomic_files import fsync_tree
from ..files.faults import fault_hook
from .fairface import FairFaceImages, ignore_stop_signals


def cache_key(dataset, resolution):
    """Identifies decoded pixels: the merged dataset's fingerprint (its files, configs, splits) and the resolution."""
    return hashlib.sha256(f"{dataset._fingerprint}|{resolution}|v1".encode()).hexdigest()[:16]


def pixel_cache_folder(dataset, cache_root, resolution):
    """The folder of this dataset's pixels at this resolution: named by ``cache_key``, so a different dataset,
    config/split selection or resolution gets its own cache."""
    return os.path.join(cache_root, f"pixels-{resolution}px-{cache_key(dataset, resolution)}")


def pixel_cache_complete(folder):
    return os.path.isfile(os.path.join(folder, "meta.json"))


def build_pixel_cache(dataset, cache_root, resolution, num_workers=0, progress=True):
    """Decode, convert and resize every image once into a memory-mapped uint8 array under ``cache_root``
    (``pixel_cache_folder``), in this process; returns the loaded cache (see ``load_pixel_cache``).

    Several processes of one machine share the work with ``pixel_cache_build``, ``encode_part`` and
    ``assemble_parts`` (utils/run/run_setup.py): the files are the same, byte for byte.
    """
    folder = pixel_cache_folder(dataset, cache_root, resolution)
    if not pixel_cache_complete(folder):
        with pixel_cache_build(folder) as tmp:
            encode_part(dataset, tmp, resolution, 0, 1, num_workers, progress)
            assemble_parts(tmp, 1, resolution)
    return load_pixel_cache(folder)


@contextlib.contextmanager
def pixel_cache_build(folder):
    """The temporary folder of a build of ``folder``; renamed to ``folder`` when the block ends without an error.

    An interrupted build is never used: only the rename makes the cache complete. The builder holds an flock on
    ``TMP.lock`` meanwhile (taken before the folder exists), so the next build deletes the temporaries of killed
    ones (their lock died with them) and never those of a live build (another run sharing the cache).
    Processes that write parts into the folder need no lock of their own: they run while this holder waits."""
    cache_root = os.path.dirname(folder)
    os.makedirs(cache_root, exist_ok=True)
    remove_abandoned_builds(cache_root)
    tmp = f"{folder}.tmp-{os.uname().nodename}-{os.getpid()}"  # per machine and process: nodes may share the disk
    with open(f"{tmp}.lock", "w") as building:  # locked before the folder exists: no live lock, a dead build
        file_locks.lock(building, blocking=True)
        os.makedirs(tmp, exist_ok=True)
        yield tmp
        try:
            os.replace(tmp, folder)
        except OSError:  # another process finished the same cache first: use that one
            if not pixel_cache_complete(folder):
                raise
            shutil.rmtree(tmp, ignore_errors=True)
        os.remove(f"{tmp}.lock")


def _part_files(tmp, part, parts):
    """(pixels, valid) file names of ``part`` of ``parts``; a one-part build writes the cache's own files."""
    prefix = "" if parts == 1 else f"part-{part}-of-{parts}-"
    return os.path.join(tmp, f"{prefix}pixels.npy"), os.path.join(tmp, f"{prefix}valid.npy")


def _part_rows(count, part, parts):
    return part * count // parts, (part + 1) * count // parts  # contiguous blocks: the assembly copies each once


def encode_part(dataset, tmp, resolution, part, parts, num_workers=0, progress=True):
    """Decode ``part`` of ``parts`` contiguous blocks of the images into its own files under ``tmp`` (one writer
    per file: each process of a shared build writes only its part)."""
    from tqdm.auto import tqdm

    begin, end = _part_rows(len(dataset), part, parts)
    pixels_file, valid_file = _part_files(tmp, part, parts)
    pixels = np.lib.format.open_memmap(pixels_file, mode="w+", dtype=np.uint8,
                                       shape=(end - begin, resolution, resolution, 3))
    valid = np.zeros(end - begin, dtype=bool)
    source = torch.utils.data.Subset(FairFaceImages(dataset, resolution), range(begin, end))
    loader = torch.utils.data.DataLoader(source, batch_size=64, num_workers=num_workers, collate_fn=list,
                                         worker_init_fn=ignore_stop_signals)
    index = 0
    for items in tqdm(loader, desc="caching pixels", disable=not progress):
        for item in items:
            if item["pixels"] is not None:
                pixels[index] = item["pixels"].permute(1, 2, 0).numpy()
                valid[index] = True
            index += 1
        fault_hook("pixel-cache")
    pixels.flush()
    del pixels
    np.save(valid_file, valid)


def assemble_parts(tmp, parts, resolution, rows_per_copy=1024):  # 1024 rows: 50 MB at 128 px
    """The parts under ``tmp`` -> ``pixels.npy``, ``valid.npy`` (parts removed) and ``meta.json``, then synced.

    Byte for byte what a one-part build writes. ``meta.json`` last: it marks a complete cache (after the rename)."""
    fault_hook("pixel-cache-parts")
    if parts > 1:
        blocks = [np.load(_part_files(tmp, part, parts)[0], mmap_mode="r") for part in range(parts)]
        count = sum(len(block) for block in blocks)
        pixels = np.lib.format.open_memmap(os.path.join(tmp, "pixels.npy"), mode="w+", dtype=np.uint8,
                                           shape=(count, resolution, resolution, 3))
        row = 0
        for block in blocks:
            for begin in range(0, len(block), rows_per_copy):
                chunk = block[begin:begin + rows_per_copy]
                pixels[row:row + len(chunk)] = chunk
                row += len(chunk)
        pixels.flush()
        del pixels, blocks
        valid = np.concatenate([np.load(_part_files(tmp, part, parts)[1]) for part in range(parts)])
        np.save(os.path.join(tmp, "valid.npy"), valid)
        for part in range(parts):
            for name in _part_files(tmp, part, parts):
                os.remove(name)
    valid = np.load(os.path.join(tmp, "valid.npy"))
    with open(os.path.join(tmp, "meta.json"), "w") as f:
        json.dump({"count": len(valid), "resolution": resolution, "skipped": int((~valid).sum())}, f)
    fsync_tree(tmp)


def remove_abandoned_builds(cache_root):
    """Delete the temporary folders of pixel-cache builds whose process died (their ``.lock`` is not held)."""
    for name in os.listdir(cache_root):
        path = os.path.join(cache_root, name)
        if ".tmp-" not in name or name.endswith(".lock") or not os.path.isdir(path):
            continue
        with open(f"{path}.lock", "a") as lock:
            if not file_locks.lock(lock) or file_locks.locks_disabled():  # free: its builder is dead
                continue  # a live build (another run sharing this cache), or no locks to tell
        shutil.rmtree(path, ignore_errors=True)
        os.remove(f"{path}.lock")


def load_pixel_cache(folder):
    with open(os.path.join(folder, "meta.json")) as f:
        meta = json.load(f)
    return {"pixels": np.load(os.path.join(folder, "pixels.npy"), mmap_mode="r"),
            "valid": np.load(os.path.join(folder, "valid.npy")), "meta": meta, "folder": folder}
