"""Images decoded once into a file on disk and read back a batch at a time: memory that does not grow with the data.

A Classification Accuracy Score trains three classifiers on tens of thousands of images each (README's dataset:
126,000 synthetic ones, as many real ones). Held as arrays they take gigabytes several times over, so:

* ``decode_rows`` reads the image column of a ``datasets`` table one Arrow record batch at a time and writes every
  usable image, decoded at the classifier's resolution (``utils.data.fairface.decode_image``), as raw uint8 to a
  file: one batch of encoded and decoded images is in memory at a time.
* ``DecodedImages`` reads rows of that file back with positional reads into a fresh array per batch;
  ``ConcatenatedImages`` puts two such files end to end (real + synthetic) without copying either.

Neither reads through a memory map: a mapped page that was touched stays in the process's resident memory until
the map is closed, so reading a whole memory-mapped dataset once (datasets' own access, or a numpy memmap) makes the
peak RSS grow with the data, even though the kernel could drop those pages. ``record_batches`` reads the Arrow
files under a ``datasets`` table with plain reads instead (benchmarks/cas_memory.py measures the difference).
"""


import numpy as np

from ..data.fairface import decode_image

READ_BATCH = 256  # encoded images per read when the table is not a plain concatenation of its files


class DecodedImages:
    """uint8 images (N, resolution, resolution, 3) stored row after row in a raw file; ``images[rows]`` or
    ``images[start:stop]`` gives a new array, read from the file."""

    def __init__(self, path, count, resolution):
        self.path, self.count, self.shape = path, count, (resolution, resolution, 3)
        self.row_bytes = resolution * resolution * 3
        self.file = open(path, "rb", buffering=0)  # unbuffered: each read goes straight into the array

    def __len__(self):
        return self.count

    def __getitem__(self, rows):
        if isinstance(rows, slice):
            start, stop, step = rows.indices(self.count)
            if step == 1:  # one read for a contiguous range (the test set, batch after batch)
                out = np.empty((max(0, stop - start), *self.shape), dtype=np.uint8)
                self._read_into(out, start)
                return out
            rows = range(start, stop, step)
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if rows.size and (rows.min() < 0 or rows.max() >= self.count):
            raise IndexError(f"rows {rows.min()}-{rows.max()} out of range for {self.count} images")
        out = np.empty((len(rows), *self.shape), dtype=np.uint8)
        for i, row in enumerate(rows):
            self._read_into(out[i], int(row))
        return out

    def _read_into(self, out, row):
        self.file.seek(row * self.row_bytes)
        view = memoryview(out).cast("B")
        while view:  # a read may return fewer bytes than asked for
            done = self.file.readinto(view)
            if not done:
                raise OSError(f"{self.path} ends before row {row}")
            view = view[done:]

    def close(self):
        self.file.close()


class ConcatenatedImages:
    """Two image sources end to end (rows of ``first`` come first); reads each row from the one that holds it."""

    def __init__(self, first, second):
        self.first, self.second = first, second
        self.shape = first.shape

    def __len__(self):
        return len(self.first) + len(self.second)

    def __getitem__(self, rows):
        rows = np.arange(len(self))[rows] if isinstance(rows, slice) else np.asarray(rows, dtype=np.int64).reshape(-1)
        out = np.empty((len(rows), *self.shape), dtype=np.uint8)
        in_first = rows < len(self.first)
        if in_first.any():
            out[in_first] = self.first[rows[in_first]]
        if (~in_first).any():
            out[~in_first] = self.second[rows[~in_first] - len(self.first)]
        return out


# ------------------------------------------------------------------------------------------------ reading
def plain_arrow_files(dataset, column="image"):
    """The Arrow stream files whose rows, end to end, are ``dataset``'s rows in order, each holding ``column`` as
    an Image struct (bytes, path); None if the dataset is not such a plain concatenation (an indices mapping of
    select/shuffle/filter, a slice of a file, a column that only a cast turns into images)."""
    import pyarrow as pa

    if getattr(dataset, "_indices", None) is not None:  # rows reordered or picked through an indices mapping
        return None
    paths = [entry["filename"] for entry in dataset.cache_files]
    if not paths:
        return None
    rows = 0
    for path in paths:
        try:
            # Counting through a memory map reads only the batches' headers; the map is closed right after.
            with pa.memory_map(path) as source:
                reader = pa.ipc.open_stream(source)
                field = reader.schema.field(column) if column in reader.schema.names else None
                rows += sum(batch.num_rows for batch in reader)
        except (OSError, pa.ArrowInvalid):
            return None
        if field is None or not pa.types.is_struct(field.type) or \
                {"bytes", "path"} - {field.type.field(i).name for i in range(field.type.num_fields)}:
            return None
    return paths if rows == len(dataset) else None


def record_batches(dataset, rows, column="image"):
    """Yield (positions, records): for the ascending ``rows`` of ``dataset``, their image records
    ({"bytes", "path"}) a batch at a time, ``positions`` indexing into ``rows``. Reads the Arrow files with plain
    reads when the table allows (``plain_arrow_files``), else through datasets (memory-mapped)."""
    import pyarrow as pa

    rows = np.asarray(rows, dtype=np.int64)
    paths = plain_arrow_files(dataset, column)
    if paths is None:
        for start in range(0, len(rows), READ_BATCH):
            chunk = rows[start: start + READ_BATCH]
            yield np.arange(start, start + len(chunk)), dataset.select(chunk)[column]
        return
    offset = 0
    for path in paths:
        with pa.OSFile(path) as source:
            for batch in pa.ipc.open_stream(source):
                first, last = np.searchsorted(rows, [offset, offset + batch.num_rows])
                if last > first:
                    wanted = pa.array(rows[first:last] - offset)
                    yield np.arange(first, last), batch.column(column).take(wanted).to_pylist()
                offset += batch.num_rows


def decode_rows(dataset, rows, resolution, path):
    """Decode ``dataset``'s image ``rows`` (ascending) into ``path`` at ``resolution``; returns (DecodedImages,
    positions of the usable ones in ``rows``). Unusable records (``decode_image`` gives None) are left out.
    Raises OSError when the file cannot be written (a full disk)."""
    kept = []
    with open(path, "wb") as f:
        for positions, records in record_batches(dataset, rows):
            for position, record in zip(positions, records):
                image = decode_image(record, resolution)
                if image is not None:
                    f.write(np.ascontiguousarray(image, dtype=np.uint8).tobytes())
                    kept.append(position)
    return DecodedImages(path, len(kept), resolution), np.asarray(kept, dtype=np.int64)
