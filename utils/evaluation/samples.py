"""Which images are evaluated: generated sample files found by name, and real FairFace records by condition."""

import os
import re

import numpy as np

from ..labels import ATTRIBUTES, CONFIG_FRAMING, NUM_CONDITIONS, UNKNOWN, decode_condition


SAMPLE_PATTERN = re.compile(r"cond(\d{1,3})(?!\d)")  # the condition id anywhere in a file name: cond042_...
SEED_PATTERN = re.compile(r"seed(\d+)")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")


def find_samples(folder, condition_ids=None):
    """[(path, condition_id, seed or None)] of the images in ``folder`` whose name holds ``cond<id>``.

    Any image name containing ``cond`` followed by the id (``cond42``, ``cond042_...``) counts; other files are
    ignored, as are ids outside ``condition_ids`` (when given). Sorted by condition, then name.
    """
    wanted = None if condition_ids is None else set(condition_ids)
    found = []
    for name in sorted(os.listdir(folder)):
        if not name.lower().endswith(IMAGE_EXTENSIONS):
            continue
        match = SAMPLE_PATTERN.search(name)
        if not match or int(match.group(1)) >= NUM_CONDITIONS:
            continue
        condition_id = int(match.group(1))
        if wanted is not None and condition_id not in wanted:
            continue
        seed = SEED_PATTERN.search(name)
        found.append((os.path.join(folder, name), condition_id, int(seed.group(1)) if seed else None))
    return sorted(found, key=lambda item: (item[1], item[0]))


def attribute_arrays(condition_ids):
    """Condition ids -> {"age": int array, "gender": ..., "race": ...}."""
    decoded = np.array([decode_condition(c) for c in condition_ids], dtype=np.int64).reshape(-1, 3)
    return {attribute: decoded[:, i] for i, attribute in enumerate(ATTRIBUTES)}


class RealPool:
    """Several (config, split) parts of a FairFace-layout dataset addressed by one flat index.

    ``parts``: [((config, split), datasets.Dataset with the image column undecoded)]. ``keys[i]`` identifies the
    photo of record ``i``: FairFace's configs hold the same photos at two paddings, in the same order, so parts
    of one split with equal length and identical labels in every row are taken to be copies and share keys
    (``aligned`` lists them); a photo and its copy are never each other's "nearest other image".
    """

    def __init__(self, parts):
        self.parts = list(parts)
        self.part_of = np.concatenate([np.full(len(ds), p) for p, (_, ds) in enumerate(self.parts)] or [[]]).astype(int)
        self.row_of = np.concatenate([np.arange(len(ds)) for _, ds in self.parts] or [[]]).astype(int)
        labels = [np.stack([np.asarray(ds[a]) for a in ATTRIBUTES], axis=1) for _, ds in self.parts]
        self.attributes = np.concatenate(labels).astype(np.int64) if labels else np.zeros((0, 3), np.int64)
        self.condition_ids = self.attributes @ np.array([14, 7, 1])
        self.framings = np.array([CONFIG_FRAMING.get(str(config), UNKNOWN) for (config, _), ds in self.parts
                                  for _ in range(len(ds))], dtype=np.int64)  # tight/wide index of each record
        self.keys, self.aligned = np.zeros(len(self), dtype=np.int64), []
        offset, owner = 0, []
        for p, ((config, split), ds) in enumerate(self.parts):
            same = next((q for q in owner if self.parts[q][0][1] == split and len(self.parts[q][1]) == len(ds)
                         and np.array_equal(labels[q], labels[p])), None)
            if same is None:
                owner.append(p)
                base = p
            else:
                base = same
                self.aligned.append((self.parts[same][0], (config, split)))
            self.keys[offset: offset + len(ds)] = base * 10_000_000 + np.arange(len(ds))
            offset += len(ds)

    def __len__(self):
        return len(self.part_of)

    def record(self, index):
        return self.parts[self.part_of[index]][1][int(self.row_of[index])]["image"]

    def source(self, index):
        (config, split), _ = self.parts[self.part_of[index]]
        return f"{config}/{split}#{int(self.row_of[index])}"


def sample_per_condition(condition_ids, wanted, per_condition, rng):
    """Indices of up to ``per_condition`` records (without replacement) of every id in ``wanted``; seeded by rng."""
    condition_ids = np.asarray(condition_ids)
    chosen = []
    for condition_id in wanted:
        candidates = np.flatnonzero(condition_ids == condition_id)
        if len(candidates):
            chosen.extend(rng.choice(candidates, size=min(per_condition, len(candidates)), replace=False).tolist())
    return np.asarray(chosen, dtype=np.int64)
