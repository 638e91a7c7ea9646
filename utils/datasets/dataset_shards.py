"""The parquet shards of a generated dataset: their features, an atomic write, and reading the labels back.

Each shard is a parquet file with the ``datasets`` features in its schema metadata (so ``load_dataset`` gives
ClassLabel columns even without the card), the image as PNG bytes in the ``Image`` struct. A shard is written
to ``data/.tmp-<name>``, flushed to disk and renamed: a killed run leaves a whole shard or none.
"""

import io
import os

from ..files.atomic_files import SaveError, fsync_dir
from ..files.faults import fault_hook
from ..labels import ATTRIBUTES, FRAMINGS

TMP_PREFIX = ".tmp-"
VERIFY_COLUMNS = ["p_age", "p_gender", "p_race", "verified", "attempts"]
MEMORISATION_COLUMNS = ["nearest_train_distance", "near_copy"]


def features(framing=False, verify=False, memorisation=False):
    """datasets.Features of a generated dataset: image, age/gender/race (FairFace's ClassLabels, in FairFace's
    order), framing (when asked), condition_id, seed, the verification columns with --verify and the memorisation
    columns with --check_memorisation."""
    import datasets

    columns = {"image": datasets.Image()}
    columns.update({a: datasets.ClassLabel(names=list(names)) for a, names in ATTRIBUTES.items()})
    if framing:
        columns["framing"] = datasets.ClassLabel(names=list(FRAMINGS))
    columns.update(condition_id=datasets.Value("int16"), seed=datasets.Value("int64"))
    if verify:  # probability the classifier gives each requested label; verified = all three are its top label
        columns.update(p_age=datasets.Value("float32"), p_gender=datasets.Value("float32"),
                       p_race=datasets.Value("float32"), verified=datasets.Value("bool"),
                       attempts=datasets.Value("int16"))
    if memorisation:  # cosine distance to the nearest training image; near_copy = below the evaluation's threshold
        columns.update(nearest_train_distance=datasets.Value("float32"), near_copy=datasets.Value("bool"))
    return datasets.Features(columns)


def png_bytes(image):
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def write_shard(path, columns, shard_features):
    """Write ``columns`` (name -> list; ``image`` as PIL images) as one parquet file at ``path``, atomically.
    Raises SaveError (the temporary file removed) when the disk is full or the folder unwritable."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = {**columns, "image": [{"bytes": png_bytes(image), "path": None} for image in columns["image"]]}
    table = pa.Table.from_pydict({name: columns[name] for name in shard_features},
                                 schema=shard_features.arrow_schema)
    folder, name = os.path.split(path)
    tmp = os.path.join(folder, TMP_PREFIX + name)
    try:
        with open(tmp, "wb") as f:
            pq.write_table(table, f)
            f.flush()
            os.fsync(f.fileno())
        fault_hook(name)
        os.replace(tmp, path)
        fsync_dir(folder)
    except OSError as error:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise SaveError(f"could not write {path}: {error.strerror or error}") from error


def remove_partial_shards(folder):
    """Delete the temporary files that killed runs left in ``data/``; returns their names."""
    removed = [name for name in sorted(os.listdir(folder)) if name.startswith(TMP_PREFIX)] if os.path.isdir(folder) \
        else []
    for name in removed:
        os.remove(os.path.join(folder, name))
    return removed


def read_labels(paths, columns):
    """The ``columns`` (no images) of the shards at ``paths``, concatenated: name -> numpy array."""
    import numpy as np
    import pyarrow.parquet as pq

    tables = [pq.read_table(path, columns=columns) for path in paths]
    return {c: np.concatenate([t.column(c).to_numpy(zero_copy_only=False) for t in tables]) for c in columns}
