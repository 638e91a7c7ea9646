"""FairFace data: load and merge the Hub configs/splits, decode images defensively, cache pixels once.

Images are decoded by our own guarded code, never inside the datasets iterator (which raises on a truncated
file): the image column is read as raw bytes, and ``decode_image`` turns every odd record into either an
RGB square or ``None`` (skipped and counted). A real FairFace run lasts days; one bad JPEG must not end it.
"""

import contextlib
import hashlib
import io
import json
import os
import shutil
import signal
import warnings

import numpy as np
import torch
from PIL import Image, ImageOps

from . import file_locks
from .atomic_files import fsync_tree
from .faults import fault_hook
from .labels import ATTRIBUTES, CONFIG_FRAMING, UNKNOWN, check_dataset_labels

MIN_IMAGE_SIDE = 16  # smaller images carry no face worth learning from: skipped
MAX_IMAGE_PIXELS = 4096 * 4096  # decompression-bomb guard: larger images are skipped before decoding


def load_fairface(dataset_name, config_names=("0.25", "1.25"), splits=("train", "validation"), cache_dir=None):
    """Every (config, split) of a FairFace-layout dataset (Hub id or local folder), merged; images undecoded.

    Each row also gets a ``framing`` column: the index of its config in ``CONFIG_FRAMING`` (0.25 -> tight,
    1.25 -> wide), ``-1`` (unknown) for any other config name."""
    import datasets

    parts = []
    for config in config_names:
        for split in splits:
            try:
                part = _load_part(dataset_name, config, split, cache_dir)
            except (FileNotFoundError, ValueError, datasets.exceptions.DatasetNotFoundError) as error:
                first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
                raise ValueError(f"cannot load dataset {dataset_name!r} config {config!r} split {split!r}: {first_line}")
            check_dataset_labels(part.features)
            part = part.cast_column("image", datasets.Image(decode=False))
            parts.append(part.add_column("framing", [CONFIG_FRAMING.get(str(config), UNKNOWN)] * len(part)))
    merged = datasets.concatenate_datasets(parts)
    check_label_ranges(merged)
    return merged


def _load_part(dataset_name, config, split, cache_dir):
    """One (config, split). A local folder is loaded through its data files: datasets caches a folder's configs by
    folder name and config alone, so another folder of the same name -- or this one, regenerated -- would silently
    give the old data; data files are cached by path and modification time."""
    import datasets

    if not os.path.isdir(dataset_name):
        return datasets.load_dataset(dataset_name, config, split=split, cache_dir=cache_dir)
    builder = datasets.load_dataset_builder(dataset_name, config, cache_dir=cache_dir)
    data_files = builder.config.data_files or {}
    if split not in data_files:
        raise ValueError(f'Unknown split "{split}". Should be one of {sorted(data_files)}.')
    module = type(builder).__module__.rsplit(".", 1)[-1]  # the packaged builder: "parquet" for FairFace's layout
    return datasets.load_dataset(module, data_files={split: list(data_files[split])}, split=split,
                                 features=builder.info.features, cache_dir=cache_dir)


def check_label_ranges(dataset):
    """Raise ValueError if any label lies outside its ClassLabel (a corrupt copy would otherwise crash mid-run)."""
    for attribute, names in ATTRIBUTES.items():
        values = np.asarray(dataset[attribute])
        bad = np.flatnonzero((values < 0) | (values >= len(names)))
        if bad.size:
            raise ValueError(f"{bad.size} records have {attribute} labels outside 0-{len(names) - 1} "
                             f"(first at row {bad[0]}: {values[bad[0]]})")


def _to_rgb(image):
    """Any PIL mode -> RGB; transparency is composited on white, 16-bit and float images are rescaled."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        image = Image.fromarray(np.clip(array / top * 255.0, 0, 255).astype(np.uint8), "L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def decode_image(record, resolution):
    """Image record ({"bytes", "path"} or PIL or None) -> uint8 array (resolution, resolution, 3), or None if unusable."""
    try:
        if record is None:
            return None
        if isinstance(record, Image.Image):
            image = record
        else:
            data = record.get("bytes")
            image = Image.open(io.BytesIO(data) if data else record["path"])
        width, height = image.size
        if min(width, height) < MIN_IMAGE_SIDE or width * height > MAX_IMAGE_PIXELS:
            return None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PIL warns on odd EXIF/ICC data; the pixels are what matter
            image = ImageOps.exif_transpose(image)
            image.load()
            image = _to_rgb(image)
        # Centre crop to a square, then resize with antialiasing: faces keep their proportions.
        image = ImageOps.fit(image, (resolution, resolution), Image.Resampling.BICUBIC)
        return np.asarray(image, dtype=np.uint8)
    except Exception:  # noqa: BLE001 - any decoder failure (truncated, garbage, bomb) means: skip this record
        return None


class FairFaceImages(torch.utils.data.Dataset):
    """Items: {"pixels": uint8 (3, H, W) or None, "attributes": long (4,) = age, gender, race, framing (-1 when
    the dataset has no ``framing`` column)}; decoded per item, or from the cache."""

    def __init__(self, dataset, resolution, cache=None):
        self.dataset, self.resolution, self.cache = dataset, resolution, cache
        framing = dataset["framing"] if "framing" in dataset.column_names else [UNKNOWN] * len(dataset)
        columns = [np.asarray(dataset[a]) for a in ATTRIBUTES] + [np.asarray(framing)]
        self.attributes = np.stack(columns, axis=1).astype(np.int64)

    def __len__(self):
        return len(self.attributes)

    def __getitem__(self, index):
        if self.cache is not None:
            pixels = self.cache["pixels"][index] if self.cache["valid"][index] else None  # copied just below
        else:
            pixels = decode_image(self.dataset[int(index)]["image"], self.resolution)
        # A contiguous (3, H, W) copy: collate's torch.stack of permuted (H, W, 3) views is a slow strided uint8
        # copy (~2 ms per 128 px image, more than reading from the cache and as much as decoding a JPEG).
        return {"pixels": None if pixels is None else torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1))),
                "attributes": torch.from_numpy(self.attributes[index])}


def collate(items, resolution):
    """Stack the usable items; unusable ones are dropped and counted. Never returns an empty batch: if every
    item was unusable, one black image with weight 0 keeps all DDP ranks doing the same forward/backward."""
    usable = [item for item in items if item["pixels"] is not None]
    weights = torch.ones(len(usable))
    if not usable:
        usable = [{"pixels": torch.zeros(3, resolution, resolution, dtype=torch.uint8),
                   "attributes": items[0]["attributes"]}]
        weights = torch.zeros(1)
    return {"pixels": torch.stack([item["pixels"] for item in usable]),
            "attributes": torch.stack([item["attributes"] for item in usable]),
            "weights": weights, "num_skipped": len(items) - int(weights.sum())}


def ignore_stop_signals(worker_id=None):
    """DataLoader ``worker_init_fn``: workers ignore SIGINT/SIGTERM (Ctrl-C and schedulers signal the whole
    process group); the main process alone decides when to stop (utils.stop_signals.StopRequest)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def to_model_range(pixels):
    """uint8 (B, 3, H, W) -> float in [-1, 1]."""
    return pixels.float().div(127.5).sub(1.0)


# ---------------------------------------------------------------------------------------------- pixel cache
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
    ``assemble_parts`` (utils/run_setup.py): the files are the same, byte for byte.
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


# ------------------------------------------------------------------------------------------ resumable order
class EpochSampler(torch.utils.data.Sampler):
    """This rank's indices of one epoch, from ``start`` on: a permutation that depends only on (seed, epoch).

    Each rank takes every ``world_size``-th index of the permutation (trimmed to equal lengths), so a run on
    N processes sees the same data as on one, and resuming mid-epoch just starts at ``start``: exact resume
    needs no sampler state.
    """

    def __init__(self, length, seed, epoch, rank=0, world_size=1, start=0, shuffle=True):
        generator = torch.Generator().manual_seed(seed * 100003 + epoch)
        order = torch.randperm(length, generator=generator) if shuffle else torch.arange(length)
        per_rank = length // world_size
        self.indices = order[rank: per_rank * world_size: world_size][start:].tolist()

    def __iter__(self):
        return iter(self.indices)

    def __len__(self):
        return len(self.indices)
