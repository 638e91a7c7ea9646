"""FairFace data: load and merge the Hub configs/splits, decode images defensively, the resumable order.

Images are decoded by our own guarded code, never inside the datasets iterator (which raises on a truncated
file): the image column is read as raw bytes, and ``decode_image`` turns every odd record into either an
RGB square or ``None`` (skipped and counted). A real FairFace run lasts days; one bad JPEG must not end it.
"""

import io
import os
import signal
import warnings

import numpy as np
import torch
from PIL import Image, ImageOps

from ..labels import ATTRIBUTES, CONFIG_FRAMING, UNKNOWN, check_dataset_labels

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
        self.loss_weights = None  # per image (utils/data/group_balance.py, --balance_with loss); None: all 1
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
                "attributes": torch.from_numpy(self.attributes[index]),
                "weight": 1.0 if self.loss_weights is None else float(self.loss_weights[index])}


def collate(items, resolution):
    """Stack the usable items; unusable ones are dropped and counted. Weights: 1 per image, or its loss-balancing
    weight. Never returns an empty batch: if every item was unusable, one black image with weight 0 keeps all DDP
    ranks doing the same forward/backward."""
    usable = [item for item in items if item["pixels"] is not None]
    num_skipped = len(items) - len(usable)
    weights = torch.tensor([float(item.get("weight", 1.0)) for item in usable], dtype=torch.float32)
    if not usable:
        usable = [{"pixels": torch.zeros(3, resolution, resolution, dtype=torch.uint8),
                   "attributes": items[0]["attributes"]}]
        weights = torch.zeros(1)
    return {"pixels": torch.stack([item["pixels"] for item in usable]),
            "attributes": torch.stack([item["attributes"] for item in usable]),
            "weights": weights, "num_skipped": num_skipped}


def ignore_stop_signals(worker_id=None):
    """DataLoader ``worker_init_fn``: workers ignore SIGINT/SIGTERM (Ctrl-C and schedulers signal the whole
    process group); the main process alone decides when to stop (utils.run.stop_signals.StopRequest)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def to_model_range(pixels):
    """uint8 (B, 3, H, W) -> float in [-1, 1]."""
    return pixels.float().div(127.5).sub(1.0)


# ------------------------------------------------------------------------------------------ resumable order
class EpochSampler(torch.utils.data.Sampler):
    """This rank's indices of one epoch, from ``start`` on: a permutation that depends only on (seed, epoch).

    Each rank takes every ``world_size``-th index of the permutation (trimmed to equal lengths), so a run on
    N processes sees the same data as on one, and resuming mid-epoch just starts at ``start``: exact resume
    needs no sampler state. ``weights`` (balanced sampling, utils/data/group_balance.py): the epoch is ``length``
    draws with replacement instead of a permutation, from the same (seed, epoch) generator: the same promises.
    """

    def __init__(self, length, seed, epoch, rank=0, world_size=1, start=0, shuffle=True, weights=None):
        generator = torch.Generator().manual_seed(seed * 100003 + epoch)
        if weights is not None:  # balanced sampling: ``length`` draws with these weights, with replacement
            order = torch.multinomial(torch.as_tensor(weights, dtype=torch.float64), length, replacement=True,
                                      generator=generator)
        else:
            order = torch.randperm(length, generator=generator) if shuffle else torch.arange(length)
        per_rank = length // world_size
        self.indices = order[rank: per_rank * world_size: world_size][start:].tolist()

    def __iter__(self):
        return iter(self.indices)

    def __len__(self):
        return len(self.indices)
