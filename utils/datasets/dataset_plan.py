"""What a generated dataset holds before any image is drawn: exact counts, one seed per image, shards, the record.

Rows. Every (condition, framing) gets its exact count (``exact_counts``), and rows are laid out condition-major:
condition, then framing, then k = 0..count-1. Row i of N is drawn from seed ``--seed + i`` (EDM's generate.py
scheme: one generator per image, seeds by image index), so an image depends on the command only, never on the
number of processes, machines or the batch it was drawn in. A row whose image is replaced (``--keep verified``)
takes its attempt r from seed ``--seed + r * N + i``: the next seeds after the dataset's own, none shared.

Shards. Rows are cut into shards of ``--shard_size`` consecutive rows, written as
``data/train-XXXXX-of-YYYYY.parquet`` (the Hub's naming); shard k belongs to process ``k % num_processes``.
A shard on disk is finished (written atomically), so a rerun skips it.

Record. The flags that decide the images are saved in the dataset folder (``RECORD_FILE``), with the SHA-256 of
the model's weight files and the dtype it drew in; a rerun with another value is refused with one line naming
what changed, as training resume is (utils/run/resume_check.py). The devices are recorded for the card, not
checked: another device changes images by float rounding only, as --batch_size and process counts do.
``prepare_folder`` checks, locks and records the folder before any image is drawn.
"""

import json
import math
import os

import numpy as np

from ..run import run_folder
from ..files.atomic_files import write_json_atomic
from ..cli import fail
from .dataset_shards import remove_partial_shards
from ..labels import ATTRIBUTES, FRAMINGS, NUM_CONDITIONS, decode_condition, parse_label

RECORD_FILE = ".generate_dataset.json"
# What the record says without deciding the rows: the devices (float rounding only) and the Hub commit (a new
# commit may hold the same weight files; those are checked by their hashes).
UNCHECKED = ("devices", "model_revision")
DATA_DIR = "data"
SHARD_PATTERN = "train-{:05d}-of-{:05d}.parquet"


# ------------------------------------------------------------------------------------------------ distribution
def json_weights(path, condition_ids):
    """Weights per condition from a JSON file: ``{"condition": {"42": 2, ...}}`` (ids left out weigh 0), or
    per attribute value ``{"age": {"20-29": 2, ...}, "race": {...}}`` (values left out weigh 0; an attribute left
    out weighs 1 for all), multiplied. ValueError with one line for anything else."""
    try:
        with open(path, encoding="utf-8") as f:
            spec = json.load(f)
    except (OSError, ValueError) as error:
        raise ValueError(f"--distribution {path}: cannot read JSON ({getattr(error, 'strerror', None) or error})")
    if not isinstance(spec, dict) or not spec or set(spec) - {"condition", *ATTRIBUTES} or \
            ("condition" in spec and len(spec) > 1) or not all(isinstance(v, dict) for v in spec.values()):
        raise ValueError(f"--distribution {path}: expected {{\"condition\": {{\"42\": 1.5, ...}}}} or weights per "
                         "attribute value {\"age\": {\"20-29\": 2, ...}, \"gender\": ..., \"race\": ...}")
    tables = {}
    for attribute, values in spec.items():
        table = {}
        for name, weight in values.items():
            try:
                index = int(name) if attribute == "condition" else parse_label(attribute, name)
                weight = float(weight)
            except (TypeError, ValueError) as error:
                raise ValueError(f"--distribution {path}: {attribute} {name!r}: {error}") from None
            if index is None or not (0 <= index < NUM_CONDITIONS) or not (weight >= 0 and math.isfinite(weight)):
                raise ValueError(f"--distribution {path}: {attribute} {name!r} weight {weight!r}: need a known "
                                 "label and a finite weight >= 0")
            table[index] = weight
        tables[attribute] = table
    if "condition" in tables:
        return [tables["condition"].get(c, 0.0) for c in condition_ids]
    return [float(np.prod([tables[a].get(v, 0.0) if a in tables else 1.0
                           for a, v in zip(ATTRIBUTES, decode_condition(c))])) for c in condition_ids]


def dataset_weights(label_counts, condition_ids):
    """Weights per condition from a labelled dataset's rows: how often each condition id occurs (FairFace's own
    frequencies). ``label_counts``: an (n, 3) array of (age, gender, race) labels."""
    ids = np.asarray(label_counts, dtype=np.int64).reshape(-1, 3) @ np.array([14, 7, 1])
    counts = np.bincount(ids, minlength=NUM_CONDITIONS)
    return [float(counts[c]) for c in condition_ids]


def fairface_weights(dataset_name, condition_ids):
    """FairFace's own frequencies: how often each condition occurs in ``dataset_name``'s 0.25 train split (a Hub
    id or a local folder in its layout). ValueError/OSError when it cannot be read."""
    from ..data.fairface import load_fairface

    train = load_fairface(dataset_name, ["0.25"], ["train"])
    return dataset_weights(np.stack([np.asarray(train[a]) for a in ATTRIBUTES], axis=1), condition_ids)


def exact_counts(weights, total):
    """Integer counts summing to ``total`` in proportion to ``weights`` (largest remainder; ties go to the
    earlier entry). ValueError for negative, non-finite or all-zero weights."""
    weights = np.asarray(weights, dtype=np.float64)
    if not len(weights) or not np.isfinite(weights).all() or (weights < 0).any() or weights.sum() <= 0:
        raise ValueError("the distribution's weights must be finite, >= 0 and not all 0 over the chosen conditions")
    shares = weights / weights.sum() * total
    counts = np.floor(shares).astype(np.int64)
    order = sorted(range(len(weights)), key=lambda i: (-(shares[i] - counts[i]), i))
    for i in order[: total - int(counts.sum())]:
        counts[i] += 1
    return counts.tolist()


# ------------------------------------------------------------------------------------------------ rows and shards
class Plan:
    """Every row of the dataset (condition id, framing index or -1, seed) and its cut into shards."""

    def __init__(self, condition_ids, counts, framings, seed, shard_size):
        framing_indices = [FRAMINGS.index(f) for f in framings] if framings else [-1]
        self.condition_ids, self.framings = [], []
        for condition_id, count in zip(condition_ids, counts):
            for framing in framing_indices:
                self.condition_ids += [condition_id] * count
                self.framings += [framing] * count
        self.condition_ids = np.asarray(self.condition_ids, dtype=np.int64)
        self.framings = np.asarray(self.framings, dtype=np.int64)
        self.seed, self.shard_size = int(seed), int(shard_size)
        self.num_rows = len(self.condition_ids)
        self.num_shards = math.ceil(self.num_rows / self.shard_size)

    def seeds(self, rows, attempt=0):
        """The seeds of ``rows`` (indices) for their ``attempt``-th image (0 = the dataset's own seed)."""
        return [self.seed + attempt * self.num_rows + int(i) for i in rows]

    def shard_rows(self, shard):
        return np.arange(shard * self.shard_size, min(self.num_rows, (shard + 1) * self.shard_size))

    def shard_path(self, output_dir, shard):
        return os.path.join(output_dir, DATA_DIR, SHARD_PATTERN.format(shard, self.num_shards))

    def shards_of(self, process_index, num_processes):
        """This process's shards: k % num_processes == process_index (EDM's all_batches[rank::world])."""
        return list(range(process_index, self.num_shards, num_processes))

    def counts_by(self):
        """{"age": {name: count}, "gender": ..., "race": ..., "framing": ...} over all rows (exact)."""
        attributes = np.array([decode_condition(c) for c in self.condition_ids]).reshape(-1, 3)
        out = {a: {name: int((attributes[:, i] == v).sum()) for v, name in enumerate(names)}
               for i, (a, names) in enumerate(ATTRIBUTES.items())}
        if (self.framings >= 0).any():
            out["framing"] = {name: int((self.framings == v).sum()) for v, name in enumerate(FRAMINGS)}
        return out


# ------------------------------------------------------------------------------------------------ the record
def read_record(output_dir):
    try:
        with open(os.path.join(output_dir, RECORD_FILE), encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        return None


def _show(value):
    return " ".join(map(str, value)) if isinstance(value, list) else str(value)


def _changed_files(recorded, current):
    """'unet/x.safetensors sha256 0123456789ab..., now ...' for each weight file that changed, came or went."""
    return "; ".join(f"{name} sha256 {(recorded.get(name) or 'none')[:12]}..., now {(current.get(name) or 'none')[:12]}"
                     "..." for name in sorted(set(recorded) | set(current)) if recorded.get(name) != current.get(name))


def check_record(recorded, current, output_dir):
    """None if ``current`` (flag -> value) matches the folder's record, else the one-line refusal naming what
    changed (a flag, or which weight file of the model)."""
    for flag, value in current.items():
        # dtype None: a record of an older version, which kept the flag as given (None: the device's default)
        if flag in UNCHECKED or flag not in recorded or recorded[flag] == value or (flag, recorded[flag]) == \
                ("dtype", None):
            continue
        what = (f"other weights of --model ({_changed_files(recorded[flag], value)})" if flag == "model_files" else
                f"--{flag} {_show(recorded[flag])}, now {_show(value)}")
        return (f"{output_dir} was generated with {what}: rerun it with the recorded value to finish it, or "
                "choose another --output_dir")
    return None


def prepare_folder(output_dir, state, record):
    """generate_dataset.py's folder: refuse one that holds something else or another command's dataset (one line,
    exit 2, on every process), take the run lock, remove partial shards of a killed run, save ``record``."""
    refusal, recorded = None, None
    if state.is_main_process:  # before any rank creates anything in the folder
        recorded = read_record(output_dir) if os.path.isdir(output_dir) else None
        if recorded is None and os.path.isdir(output_dir) and \
                set(os.listdir(output_dir)) - {run_folder.LOCK_FILE}:
            refusal = f"{output_dir} is not empty and holds no generated dataset; choose another --output_dir"
        refusal = refusal or (recorded and check_record(recorded, record, output_dir)) or None
    if state.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        refusal = broadcast_object_list([refusal], from_process=0)[0]
    if refusal:
        fail(refusal)
    try:
        os.makedirs(os.path.join(output_dir, DATA_DIR), exist_ok=True)
    except OSError as error:
        fail(f"cannot create {output_dir}/{DATA_DIR}: {error.strerror or error}")
    run_folder.claim(state, output_dir)
    if state.is_main_process:
        removed = remove_partial_shards(os.path.join(output_dir, DATA_DIR))
        if removed:
            print(f"removed {len(removed)} partial shard(s) of an interrupted run")
        # every device that drew shards of this folder (the card names them)
        record["devices"] = list(dict.fromkeys([*(recorded or {}).get("devices", []), *record.get("devices", [])]))
        try:
            write_json_atomic(os.path.join(output_dir, RECORD_FILE), record)
        except OSError as error:
            fail(f"cannot write to {output_dir}: {error.strerror or error}")
    state.wait_for_everyone()
