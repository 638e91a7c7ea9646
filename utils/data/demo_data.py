"""A small synthetic FairFace: procedural faces in the exact layout of the Hub dataset ``HuggingFaceM4/FairFace``.

``make_demo_dataset(folder)`` writes parquet files and a README with ``configs:`` so that training runs offline
through the very same ``datasets.load_dataset(folder, "0.25", split="train")`` call it uses for the Hub copy.

Every attribute changes a large, flat-coloured, well separated part of the drawing, so it survives a 32 px
diffusion model and can be read back from pixels without any neural classifier (``measure_attributes``):

    race   -> skin tone of the face oval (7 skin-like tones, pairwise RGB distance >= 0.15 on a 0-1 scale)
    gender -> hair style: Female long hair falling beside the face to the shoulders, Male short hair on top
    age    -> hair lightness, dark brown (0-2) -> grey -> white (more than 70); children also have smaller heads

Background, shirt, eyes and mouth are fixed; each image gets a little jitter (position, colours, mouth width).
The "1.25" config shows the same kind of face zoomed out (more margin), like FairFace's larger face padding;
``measure_framing`` reads which of the two layouts an image shows (the framing condition, utils/labels.py).
"""

import io
import os

import numpy as np
from PIL import Image, ImageDraw

from . import group_balance
from ..labels import AGES, ATTRIBUTES, GENDERS, NUM_CONDITIONS, RACES, decode_condition

REFERENCE_RESOLUTION = 64  # measure_attributes resizes every image to this size before reading its regions
CONFIG_ZOOM = {"0.25": 1.0, "1.25": 0.8}  # "1.25": the same face, 80 % as large, with more background around
SUPERSAMPLING = 4  # drawn at 4x and box-averaged down: smooth edges, flat interiors

BACKGROUND = (70, 145, 200)  # saturated blue: far from every hair grey and every skin tone
SHIRT = (125, 60, 95)
EYE_WHITE, PUPIL, MOUTH = (245, 245, 245), (35, 28, 28), (175, 60, 70)

# Skin tones in RACES order (East Asian, Indian, Black, White, Middle Eastern, Latino_Hispanic, Southeast Asian).
# Chosen along the light -> dark skin range with some hue spread; the closest pair is ~0.20 apart (0-1 RGB).
SKIN_TONES = np.array([
    (240, 205, 150),  # East Asian: light, yellowish
    (125, 80, 50),  # Indian: brown
    (75, 45, 30),  # Black: dark brown
    (250, 220, 205),  # White: light, pinkish
    (215, 165, 125),  # Middle Eastern: light olive-tan
    (190, 135, 90),  # Latino_Hispanic: tan
    (165, 110, 60),  # Southeast Asian: golden brown
], dtype=np.float64)


def _hair_colours():
    """9 hair colours in AGES order: lightness rises evenly from dark to white; young hair is also warmer (brown)."""
    levels = np.linspace(0.10, 0.92, len(AGES)) * 255  # ~26/255 per channel apart: 0.18 RGB distance
    warmth = np.linspace(22, 0, len(AGES))  # brown tint fading to neutral grey
    return np.stack([levels + warmth, levels + 0.1 * warmth, levels - 0.8 * warmth], axis=1)


HAIR_COLOURS = _hair_colours()
HEAD_SCALE = (0.84, 0.92) + (1.0,) * (len(AGES) - 2)  # 0-2 and 3-9 year olds have smaller heads

SKIN_JITTER, HAIR_JITTER = 5.0, 4.0  # uniform +- per channel (0-255); far below half the gap between levels
POSITION_JITTER = 1.5 / REFERENCE_RESOLUTION  # uniform +- in image units: +-1.5 px at 64 px
HEAD_ANCHOR = (0.5, 0.30)  # smaller heads shrink towards the fringe line, so the hair patch stays in place

# Measured regions, (x0, y0, x1, y1) in image units. Each lies inside its part in *both* layouts ("0.25" and the
# zoomed-out "1.25"), for every head size and jitter, so a generated face is read correctly whichever layout the
# model drew: the forehead-to-mouth skin, the lower half of the hair cap above the fringe, and both sides of the
# neck (long hair for Female, background for Male).
SKIN_BOX = (0.36, 0.51, 0.64, 0.59)
HAIR_BOX = (0.42, 0.22, 0.58, 0.30)
SIDE_BOXES = ((0.19, 0.55, 0.26, 0.68), (0.74, 0.55, 0.81, 0.68))
# Framing: a band across the neck near the bottom of the image (neither moves with head size). "0.25" (tight)
# shows the neck there (it ends at y >= 0.897), the zoomed-out "1.25" (wide) the shirt (it starts at y <= 0.855).
FRAMING_BOX = (0.47, 0.85, 0.53, 0.88)
WIDE_THRESHOLD = 0.35  # position neck -> shirt; drawn faces: tight <= 0.27, wide >= 0.41 even blurred and noisy

# Odd records added by ``make_demo_dataset(broken_images=True)`` to the "0.25" train split (see its docstring).
BROKEN_RECORDS_SKIPPED = 7  # undecodable or outside the size limits: the training data loader must skip them
ODD_RECORDS_CONVERTIBLE = 7  # unusual but valid modes: must be converted to RGB and used
ODD_RECORDS_ADDED = BROKEN_RECORDS_SKIPPED + ODD_RECORDS_CONVERTIBLE

# distribution="fairface": 8 x the uniform demo's 2016 faces, so that FairFace's rarest condition (70+ Female Middle
# Eastern, 0.05 % of its faces) has 8 of them and an age group of 70+ 156; the demo budget (1008 steps of 32) sees
# each image twice.
LONG_TAILED_DEMO_IMAGES = 16128
DISTRIBUTION_TEXT = {"uniform": "every one of the 126 equally often (+-1)",
                     "fairface": "FairFace's own frequencies (long-tailed by age: 1 % over 70, 30 % in their "
                                 "twenties), each condition's share the product of its age, gender and race shares"}


# ---------------------------------------------------------------------------------------------------- drawing
class _Canvas:
    """Maps face coordinates (image units of the reference "0.25" layout) to pixels of a supersampled canvas."""

    def __init__(self, size, zoom, offset, head_scale):
        self.size, self.zoom, self.offset, self.head_scale = size, zoom, offset, head_scale
        self.image = Image.new("RGB", (size, size), BACKGROUND)
        self.draw = ImageDraw.Draw(self.image)

    def point(self, x, y, head=True):
        if head:  # parts of the head shrink with the head; background, neck, shirt and long hair do not
            x = HEAD_ANCHOR[0] + (x - HEAD_ANCHOR[0]) * self.head_scale
            y = HEAD_ANCHOR[1] + (y - HEAD_ANCHOR[1]) * self.head_scale
        x, y = x + self.offset[0], y + self.offset[1]
        x, y = 0.5 + (x - 0.5) * self.zoom, 0.5 + (y - 0.5) * self.zoom  # config padding: zoom about the centre
        return x * self.size, y * self.size

    def box(self, cx, cy, rx, ry, head=True):
        (x0, y0), (x1, y1) = self.point(cx - rx, cy - ry, head), self.point(cx + rx, cy + ry, head)
        return [x0, y0, x1, y1]


def _colour(rgb):
    return tuple(int(round(c)) for c in np.clip(rgb, 0, 255))


def draw_face(age, gender, race, rng, resolution=64, zoom=1.0):
    """A procedural face (RGB PIL image, ``resolution`` square) showing the given attribute indices.

    ``rng`` (numpy Generator) supplies the small per-image variation; ``zoom`` < 1 draws the face smaller with more
    margin (``CONFIG_ZOOM["1.25"]`` for the "1.25" config).
    """
    skin = SKIN_TONES[race] + rng.uniform(-SKIN_JITTER, SKIN_JITTER, 3)
    hair = HAIR_COLOURS[age] + rng.uniform(-HAIR_JITTER, HAIR_JITTER, 3)
    offset = rng.uniform(-POSITION_JITTER, POSITION_JITTER, 2)
    mouth_width = 0.06 * rng.uniform(0.8, 1.2)
    canvas = _Canvas(resolution * SUPERSAMPLING, zoom, offset, HEAD_SCALE[age])
    draw, box = canvas.draw, canvas.box
    skin_c, hair_c, shadow_c = _colour(skin), _colour(hair), _colour(skin * 0.85)

    draw.ellipse(box(0.5, 1.36, 0.48, 0.50, head=False), fill=SHIRT)  # shoulders; reaches below any zoomed frame
    if GENDERS[gender] == "Female":
        # Long hair behind the head, falling beside the face onto the shoulders (fixed width for every head size).
        _, hair_top = canvas.point(0.5, 0.11)
        x0, _ = canvas.point(0.09, 0, head=False)
        x1, bottom = canvas.point(0.91, 0.91, head=False)
        draw.rounded_rectangle([x0, hair_top, x1, bottom], radius=0.28 * canvas.size * zoom, fill=hair_c)
    x0, y0 = canvas.point(0.43, 0.6, head=False)
    x1, y1 = canvas.point(0.57, 0.92, head=False)
    draw.rectangle([x0, y0, x1, y1], fill=shadow_c)  # neck
    if GENDERS[gender] == "Male":
        for side in (-1, 1):  # ears, hidden under long hair otherwise
            draw.ellipse(box(0.5 + side * 0.225, 0.48, 0.035, 0.055), fill=shadow_c)
    draw.ellipse(box(0.5, 0.40, 0.26, 0.29), fill=hair_c)  # hair cap; the face covers all but its top and temples
    draw.ellipse(box(0.5, 0.53, 0.22, 0.28), fill=skin_c)  # face oval
    # Fringe: the part of the hair ellipse above y = 0.32, drawn over the forehead (a chord between two angles).
    angle = np.degrees(np.arcsin((0.32 - 0.40) / 0.29))
    draw.chord(box(0.5, 0.40, 0.26, 0.29), 180 - angle, 360 + angle, fill=hair_c)
    for side in (-1, 1):
        x = 0.5 + side * 0.09
        draw.ellipse(box(x, 0.47, 0.045, 0.028), fill=EYE_WHITE)
        draw.ellipse(box(x, 0.47, 0.022, 0.022), fill=PUPIL)
        draw.rectangle(box(x, 0.415, 0.045, 0.009), fill=hair_c)  # eyebrow
    draw.ellipse(box(0.5, 0.565, 0.018, 0.035), fill=shadow_c)  # nose
    draw.chord(box(0.5, 0.655, mouth_width, 0.03), 0, 180, fill=MOUTH)  # smile: lower half of an ellipse
    return canvas.image.reduce(SUPERSAMPLING)


# ------------------------------------------------------------------------------------------------ measurement
def _as_arrays(images):
    """Images (list of PIL / arrays, or an (N, H, W, 3) array) -> float array (N, 64, 64, 3), 0-255."""
    if isinstance(images, Image.Image) or (isinstance(images, np.ndarray) and images.ndim == 3):
        images = [images]
    out = []
    for image in images:
        if not isinstance(image, Image.Image):
            image = Image.fromarray(np.asarray(image, dtype=np.uint8))
        image = image.convert("RGB").resize((REFERENCE_RESOLUTION,) * 2, Image.Resampling.BILINEAR)
        out.append(np.asarray(image, dtype=np.float64))
    return np.stack(out) if out else np.zeros((0, REFERENCE_RESOLUTION, REFERENCE_RESOLUTION, 3))


def _region_median(pixels, box):
    """Per-channel median colour of a region for every image: robust to eyes, nose or a stray edge inside it."""
    x0, y0, x1, y1 = box
    n = REFERENCE_RESOLUTION
    cols = slice(int(round(x0 * n)), max(int(round(x1 * n)), int(round(x0 * n)) + 1))
    rows = slice(int(round(y0 * n)), max(int(round(y1 * n)), int(round(y0 * n)) + 1))
    region = pixels[:, rows, cols].reshape(len(pixels), -1, 3)
    return np.median(region, axis=1)


def _nearest(colours, prototypes):
    return np.argmin(((colours[:, None, :] - prototypes[None]) ** 2).sum(-1), axis=1)


def measure_attributes(images):
    """Read age, gender and race back from drawn faces by nearest-prototype colours of fixed regions.

    ``images``: list of PIL images or uint8 array (N, H, W, 3), any size >= 16 px (resized to 64 px here), drawn in
    either config's layout (the regions fit both). Returns {"age", "gender", "race"}, each an
    int array (N,) of predicted indices. Race: skin colour -> nearest skin tone; age: hair colour -> nearest
    hair level; gender: whether the regions beside the jaw look like this face's hair (Female) or background (Male).
    """
    pixels = _as_arrays(images)
    skin = _region_median(pixels, SKIN_BOX)
    hair = _region_median(pixels, HAIR_BOX)
    side = np.mean([_region_median(pixels, b) for b in SIDE_BOXES], axis=0)
    # Position of the side colour on the line background -> hair: ~0 for background, ~1 for long hair.
    background = np.asarray(BACKGROUND, dtype=np.float64)
    direction = hair - background
    t = ((side - background) * direction).sum(-1) / np.maximum((direction ** 2).sum(-1), 1e-6)
    return {"age": _nearest(hair, HAIR_COLOURS), "gender": (t > 0.5).astype(np.int64),
            "race": _nearest(skin, SKIN_TONES)}


def measure_framing(images):
    """Read the framing back from drawn faces: int array (N,), 0 = tight ("0.25" layout), 1 = wide ("1.25").

    The band ``FRAMING_BOX`` shows the neck (skin shadow: 0.85 x this face's measured skin) in the tight layout
    and the shirt in the wide one; its colour's position on the line neck -> shirt decides (tests/test_demo_data.py).
    """
    pixels = _as_arrays(images)
    neck = _region_median(pixels, SKIN_BOX) * 0.85
    band = _region_median(pixels, FRAMING_BOX)
    direction = np.asarray(SHIRT, dtype=np.float64) - neck
    t = ((band - neck) * direction).sum(-1) / np.maximum((direction ** 2).sum(-1), 1e-6)
    return (t > WIDE_THRESHOLD).astype(np.int64)


# ----------------------------------------------------------------------------------------------- the dataset
def _png(image):
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def _jpeg(image):
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def _odd_records(rng, resolution):
    """(image record, name) pairs: first the BROKEN_RECORDS_SKIPPED unusable ones, then the convertible ones."""
    face = draw_face(4, 1, 3, rng, resolution)
    png, jpeg = _png(face), _jpeg(face)
    palette = face.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    buffer = io.BytesIO()
    palette.save(buffer, "PNG", transparency=palette.getpixel((0, 0)))  # background index transparent
    grey16 = Image.fromarray(np.asarray(face.convert("L"), dtype=np.uint16) * 257)  # 16-bit greyscale, mode I;16
    bad = [
        (png[: len(png) // 2], "truncated png"),
        (jpeg[: len(jpeg) // 2], "truncated jpeg"),
        (b"", "zero bytes"),
        (b"NOT AN IMAGE" + rng.bytes(500), "garbage bytes"),
        (None, "None"),
        (_png(Image.new("RGB", (3, 3), BACKGROUND)), "tiny 3x3 (below the 16 px minimum side)"),
        # 36 M pixels, above the 4096*4096 cap; uniform grey, so only ~40 kB on disk.
        (_png(Image.new("L", (6000, 6000), 128)), "huge 6000x6000 (above the 4096*4096 pixel cap)"),
    ]
    convertible = [
        (_jpeg(face.convert("CMYK")), "CMYK jpeg"),
        (buffer.getvalue(), "P with transparency png"),
        (_png(face.convert("LA")), "LA png"),
        (_png(grey16), "I;16 png"),
        (_png(face.convert("1")), "1-bit png"),
        (_png(face.convert("RGBA")), "RGBA png"),
        (_png(face.convert("L")), "L png"),
    ]
    assert len(bad) == BROKEN_RECORDS_SKIPPED and len(convertible) == ODD_RECORDS_CONVERTIBLE
    return [(None if data is None else {"bytes": data, "path": None}, name) for data, name in bad + convertible]


def _features(label_names):
    import datasets

    names = {attribute: list(label_names.get(attribute, default)) for attribute, default in ATTRIBUTES.items()}
    return datasets.Features({
        "image": datasets.Image(),
        "age": datasets.ClassLabel(names=names["age"]),
        "gender": datasets.ClassLabel(names=names["gender"]),
        "race": datasets.ClassLabel(names=names["race"]),
        "service_test": datasets.Value("bool"),
    })


def _readme(parts, distribution):
    lines = ["---", "pretty_name: FairFace (synthetic demo)", "configs:"]
    for config in CONFIG_ZOOM:
        lines += [f"- config_name: '{config}'", "  data_files:"]
        for split in ("train", "validation"):
            lines += [f"  - split: {split}", f"    path: {config}/{split}-00000-of-00001.parquet"]
    lines += ["---", "", "# FairFace (synthetic demo)", "",
              "Procedurally drawn faces written by `utils/data/demo_data.py` in the layout of `HuggingFaceM4/FairFace`",
              "(same configs, splits, columns and ClassLabel features), for offline training runs and tests.",
              "They are not photographs of anyone: skin tone encodes race, hair style gender, hair lightness age.", "",
              f"Conditions: {DISTRIBUTION_TEXT[distribution]}.", "",
              "| config | split | records |", "|---|---|---:|"]
    lines += [f"| {config} | {split} | {count} |" for (config, split), count in parts.items()]
    return "\n".join(lines) + "\n"


def make_demo_dataset(output_dir, num_images=2016, resolution=64, seed=0, broken_images=False, label_names=None,
                      distribution="uniform"):
    """Write a synthetic FairFace (parquet files + README with ``configs:``) to ``output_dir``; returns it.

    ``num_images`` faces are split 40 % / 10 % / 40 % / 10 % over 0.25/train, 0.25/validation, 1.25/train and
    1.25/validation. ``distribution="uniform"``: conditions cycle through all 126 ids before shuffling (with
    ``seed``), so every condition appears equally often (+-1) in the whole set. ``"fairface"``: FairFace's own
    frequencies, long-tailed by age (utils/data/group_balance.py: exact counts, the product of the published
    marginals; ``LONG_TAILED_DEMO_IMAGES`` gives its rarest condition 8 faces). Everything is deterministic given
    ``seed``.

    ``label_names``: e.g. ``{"race": [...]}`` overrides ClassLabel names (same number of names) to write a
    deliberately *mislabelled* copy, which training must refuse.

    ``broken_images=True`` also mixes ``ODD_RECORDS_ADDED`` = 14 records, each with a valid label, into the
    "0.25" train split only (so the count is the same whether one config or both are loaded):

    * ``BROKEN_RECORDS_SKIPPED`` = 7 to be skipped: a truncated PNG, a truncated JPEG, zero bytes, garbage bytes,
      a ``None`` image, a 3x3 PNG (below a 16 px minimum side) and a 6000x6000 PNG (above a 4096*4096 pixel cap);
    * ``ODD_RECORDS_CONVERTIBLE`` = 7 to be converted to RGB and used: CMYK JPEG, P with transparency PNG, LA,
      I;16, 1-bit, RGBA and L PNGs.
    """
    if num_images < 4:
        raise ValueError(f"num_images must be >= 4 (one per config and split), got {num_images}")
    if resolution < 16:
        raise ValueError(f"resolution must be >= 16, got {resolution}")
    label_names = dict(label_names or {})
    for attribute, names in label_names.items():
        if attribute not in ATTRIBUTES or len(names) != len(ATTRIBUTES[attribute]):
            raise ValueError(f"label_names[{attribute!r}] must list {len(ATTRIBUTES.get(attribute, ()))} names")
    features = _features(label_names)

    rng = np.random.default_rng(seed)
    if distribution == "uniform":
        conditions = rng.permutation(np.arange(num_images) % NUM_CONDITIONS)
    else:  # ValueError for an unknown distribution, or one that leaves a condition without an image
        counts = group_balance.condition_counts(num_images, distribution)
        conditions = rng.permutation(np.repeat(np.arange(NUM_CONDITIONS), counts))
    validation = max(1, round(0.1 * num_images))  # per config; the rest is train: 40/10/40/10 %
    first_train = (num_images - 2 * validation + 1) // 2
    sizes = [first_train, validation, num_images - 2 * validation - first_train, validation]
    parts, start = {}, 0
    for (config, split), size in zip([(c, s) for c in CONFIG_ZOOM for s in ("train", "validation")], sizes):
        records = _draw_part(conditions[start: start + size], rng, resolution, CONFIG_ZOOM[config])
        start += size
        if broken_images and (config, split) == ("0.25", "train"):
            for index, (image, _name) in enumerate(_odd_records(rng, resolution)):
                _append(records, image, decode_condition(index * 37 % NUM_CONDITIONS), rng)
            order = rng.permutation(len(records["age"]))  # mix the odd records in among the good ones
            records = {key: [values[i] for i in order] for key, values in records.items()}
        _write_parquet(records, features, os.path.join(output_dir, config, f"{split}-00000-of-00001.parquet"))
        parts[config, split] = len(records["age"])
    with open(os.path.join(output_dir, "README.md"), "w") as f:
        f.write(_readme(parts, distribution))
    return str(output_dir)


def _draw_part(conditions, rng, resolution, zoom):
    records = {"image": [], "age": [], "gender": [], "race": [], "service_test": []}
    for condition in conditions:
        age, gender, race = decode_condition(condition)
        image = draw_face(age, gender, race, rng, resolution, zoom=zoom)
        _append(records, {"bytes": _png(image), "path": None}, (age, gender, race), rng)
    return records


def _write_parquet(records, features, path):
    """Dataset.from_dict + to_parquet: the parquet schema metadata then carries the features (ClassLabel names)."""
    import datasets

    os.makedirs(os.path.dirname(path), exist_ok=True)
    was_disabled = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()  # one bar per tiny file is noise
    try:
        datasets.Dataset.from_dict(records, features=features).to_parquet(path)
    finally:
        if not was_disabled:
            datasets.enable_progress_bars()


def _append(records, image, attributes, rng):
    records["image"].append(image)
    for key, value in zip(("age", "gender", "race"), attributes):
        records[key].append(int(value))
    records["service_test"].append(bool(rng.random() < 0.5))


def attribute_hits(images, conditions):
    """Per image, whether each requested attribute was drawn: {"age", "gender", "race", "all": bool arrays}."""
    requested = np.asarray(conditions, dtype=np.int64)
    measured = measure_attributes(images)
    hits = {name: measured[name] == requested[:, i] for i, name in enumerate(("age", "gender", "race"))}
    hits["all"] = hits["age"] & hits["gender"] & hits["race"]
    return hits


def recovery_rates(images, conditions):
    """How often the requested attributes are drawn: shares per attribute, all three, and per group.

    ``conditions``: the requested (age, gender, race) index per image (no unknowns). Returns
    {"age": share, "gender": share, "race": share, "all": share, "groups": {"race=Black": share-of-all-three, ...}}.
    """
    requested = np.asarray(conditions, dtype=np.int64)
    hits = attribute_hits(images, conditions)
    every = hits["all"]
    rates = {name: float(hit.mean()) for name, hit in hits.items()}
    rates["groups"] = {f"{name}={names[value]}": float(every[requested[:, i] == value].mean())
                       for i, (name, names) in enumerate((("age", AGES), ("gender", GENDERS), ("race", RACES)))
                       for value in range(len(names)) if (requested[:, i] == value).any()}
    return rates
