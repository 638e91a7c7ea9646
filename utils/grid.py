"""Labelled image grids: a block of equal-size tiles with row labels on the left and column headers on top.

Used by sample_fairface.py --grid (rows = conditions, columns = seeds), make_grid.py (rows = epochs or
ages, columns = conditions) and app.py's atlas (``atlas_grid``). The tiles touch, as in diffusers' ``make_image_grid``, and sit in the bottom-right
corner: the label margins are ``width - cols * tile`` on the left and ``height - rows * tile`` on top.
"""

import math
import re

from diffusers.utils import make_image_grid
from PIL import Image, ImageDraw, ImageFont

from .labels import AGES, GENDERS, NUM_CONDITIONS, RACES

MIN_TILE = 96  # smaller images (the 32 px demo model) are enlarged so that labels as wide as a tile stay legible
BACKGROUND, INK = "white", (40, 40, 40)


def tile_size(image_size, min_tile=MIN_TILE):
    """Side of a tile for images of ``image_size`` px: the image enlarged by a whole factor to at least min_tile."""
    return image_size * max(1, math.ceil(min_tile / image_size))


def load_font(size):
    """PIL's default font at ``size`` px (a scalable font since Pillow 10.1; the small bitmap font before)."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:
        return ImageFont.load_default()


def _wrap(draw, text, font, width):
    """Greedy word wrap to ``width`` px; breaks at spaces and after '_' (Latino_Hispanic); keeps given newlines."""
    lines = []
    for paragraph in str(text).split("\n"):
        words = [w for w in re.split(r"\s+|(?<=_)", paragraph) if w]
        line = ""
        for word in words:
            candidate = line + word if not line or line.endswith("_") else f"{line} {word}"
            if line and draw.textlength(candidate, font=font) > width:
                lines.append(line)
                line = word
            else:
                line = candidate
        lines.append(line)
    return "\n".join(lines)


def labelled_grid(images, rows, cols, row_labels=None, col_labels=None, min_tile=MIN_TILE):
    """``images`` (row-major, all one size) as a rows x cols grid with optional row labels and column headers."""
    if len(images) != rows * cols:
        raise ValueError(f"{len(images)} images for a {rows} x {cols} grid")
    tile = tile_size(images[0].width, min_tile)
    # NEAREST: an enlarged small sample shows its real pixels instead of an interpolated blur.
    tiles = make_image_grid([image.convert("RGB").resize((tile, tile), Image.NEAREST) for image in images], rows, cols)

    font = load_font(max(12, tile // 9))
    pad = max(4, tile // 24)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    def block(text, width):  # wrapped text and its size in px
        text = _wrap(measure, text, font, width)
        # Height from the line count alone ("Ag" per line), so headers line up whatever letters they hold.
        reference = "\n".join(["Ag"] * (text.count("\n") + 1))
        return text, measure.multiline_textbbox((0, 0), text, font=font, spacing=2)[2], \
            measure.multiline_textbbox((0, 0), reference, font=font, spacing=2)[3]

    rows_text = [block(label, 2 * tile) for label in row_labels] if row_labels else []
    cols_text = [block(label, tile - pad) for label in col_labels] if col_labels else []
    left = max((w for _, w, _ in rows_text), default=-2 * pad) + 2 * pad
    top = max((h for _, _, h in cols_text), default=-2 * pad) + 2 * pad

    canvas = Image.new("RGB", (left + tiles.width, top + tiles.height), BACKGROUND)
    canvas.paste(tiles, (left, top))
    draw = ImageDraw.Draw(canvas)
    for r, (text, w, h) in enumerate(rows_text):  # right-aligned, centred on the row
        draw.multiline_text((left - pad - w, top + r * tile + (tile - h) // 2), text, fill=INK, font=font,
                            spacing=2, align="right")
    for c, (text, w, h) in enumerate(cols_text):  # centred above the column, bottom-aligned
        draw.multiline_text((left + c * tile + (tile - w) // 2, top - pad - h), text, fill=INK, font=font,
                            spacing=2, align="center")
    return canvas


def atlas_grid(images, note=""):
    """The 126-condition atlas: ``images`` in condition-id order fill 9 rows (ages) x 14 columns (gender x race);
    ``note`` (e.g. ", tight") follows each row label."""
    if len(images) != NUM_CONDITIONS:
        raise ValueError(f"an atlas takes one image per condition ({NUM_CONDITIONS}), got {len(images)}")
    return labelled_grid(images, len(AGES), len(GENDERS) * len(RACES), row_labels=[age + note for age in AGES],
                         col_labels=[f"{gender}\n{race}" for gender in GENDERS for race in RACES])
