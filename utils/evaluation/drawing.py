"""Plots of the evaluation, PIL only: grouped bars, confusion heat maps, nearest-neighbour pairs."""

import math

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .features import to_pil


SHORT_NAMES = {  # compact axis labels for the plots
    "age": ("0-2", "3-9", "10-19", "20-29", "30-39", "40-49", "50-59", "60-69", "70+"),
    "gender": ("Male", "Female"),
    "race": ("E Asian", "Indian", "Black", "White", "Mid East", "Latino", "SE Asian"),
}


GENERATED_COLOUR, REAL_COLOUR, TEXT_COLOUR = (52, 110, 200), (170, 170, 170), (25, 25, 25)


def _font(size=13):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed bitmap font
        return ImageFont.load_default()


def _text_width(draw, text, font):
    left, _, right, _ = draw.textbbox((0, 0), text, font=font)
    return right - left


def bar_panels(title, panels, series=("generated", "real"), colours=(GENERATED_COLOUR, REAL_COLOUR), max_value=1.0,
               value_format="{:.0%}"):
    """Horizontal grouped bars, panels side by side: ``panels`` = [(panel title, [(row label, [value per
    series or None]), ...])]. ``max_value`` None: the largest value. Returns a PIL image."""
    font, small, bold = _font(13), _font(11), _font(15)
    values = [v for _, rows in panels for _, vs in rows for v in vs if v is not None and np.isfinite(v)]
    top = max_value if max_value is not None else (max(values) if values else 1.0) or 1.0
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_w = 8 + max([_text_width(probe, label, font) for _, rows in panels for label, _ in rows] + [40])
    bar_h, gap, bar_w, value_w = 11, 7, 200, 48
    panel_w = label_w + bar_w + value_w
    rows_max = max(len(rows) for _, rows in panels)
    height = 60 + 24 + rows_max * (len(series) * bar_h + gap) + 10
    image = Image.new("RGB", (len(panels) * panel_w + 20, height), "white")
    draw = ImageDraw.Draw(image)
    draw.text((10, 8), title, fill=TEXT_COLOUR, font=bold)
    x = 10 + _text_width(draw, title, bold) + 20
    for name, colour in zip(series, colours):  # legend
        draw.rectangle([x, 12, x + 12, 22], fill=colour)
        draw.text((x + 16, 9), name, fill=TEXT_COLOUR, font=small)
        x += 30 + _text_width(draw, name, small)
    for p, (panel_title, rows) in enumerate(panels):
        x0 = 10 + p * panel_w
        draw.text((x0 + label_w, 40), panel_title, fill=TEXT_COLOUR, font=font)
        y = 62
        for label, vs in rows:
            block = len(series) * bar_h
            draw.text((x0 + label_w - 6 - _text_width(draw, label, font), y + block / 2 - 8), label, fill=TEXT_COLOUR,
                      font=font)
            for s, value in enumerate(vs):
                yy = y + s * bar_h
                if value is None or not np.isfinite(value):
                    draw.text((x0 + label_w + 2, yy - 1), "n/a", fill=REAL_COLOUR, font=small)
                    continue
                length = int(round(bar_w * min(max(value / top, 0.0), 1.0)))
                draw.rectangle([x0 + label_w, yy, x0 + label_w + max(length, 1), yy + bar_h - 2], fill=colours[s])
                draw.text((x0 + label_w + length + 3, yy - 1), value_format.format(value), fill=TEXT_COLOUR, font=small)
            y += block + gap
        draw.line([x0 + label_w, 58, x0 + label_w, y], fill=(120, 120, 120))
    return image


def _vertical_text(text, font, colour=TEXT_COLOUR):
    probe = ImageDraw.Draw(Image.new("L", (1, 1)))
    left, top, right, bottom = probe.textbbox((0, 0), text, font=font)
    canvas = Image.new("RGBA", (right - left + 2, bottom - top + 4), (255, 255, 255, 0))
    ImageDraw.Draw(canvas).text((-left + 1, -top + 2), text, fill=colour + (255,), font=font)
    return canvas.rotate(90, expand=True)


def confusion_heatmap(matrix, labels, title, cell=34):
    """Row-normalised confusion matrix (rows = requested/true, columns = predicted) with counts in the cells."""
    matrix = np.asarray(matrix, dtype=np.int64)
    n = len(labels)
    font, small, bold = _font(12), _font(10 if cell < 40 else 12), _font(14)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_w = 10 + max(_text_width(probe, label, font) for label in labels)
    columns = [_vertical_text(label, font) for label in labels]
    top = 34 + max(c.height for c in columns) + 6
    image = Image.new("RGB", (label_w + n * cell + 30, top + n * cell + 30), "white")
    draw = ImageDraw.Draw(image)
    draw.text((10, 8), title, fill=TEXT_COLOUR, font=bold)
    for j, column in enumerate(columns):
        image.paste(column, (label_w + j * cell + (cell - column.width) // 2, top - 4 - column.height), column)
    rows = matrix.sum(axis=1, keepdims=True)
    share = np.divide(matrix, np.maximum(rows, 1))
    for i in range(n):
        draw.text((label_w - 6 - _text_width(draw, labels[i], font), top + i * cell + cell / 2 - 8), labels[i],
                  fill=TEXT_COLOUR, font=font)
        for j in range(n):
            s = float(share[i, j])
            colour = tuple(int(round(255 - s * (255 - c))) for c in (20, 60, 150))  # white -> dark blue
            box = [label_w + j * cell, top + i * cell, label_w + (j + 1) * cell - 1, top + (i + 1) * cell - 1]
            draw.rectangle(box, fill=colour, outline=(225, 225, 225) if i != j else (240, 150, 40))
            if matrix[i, j]:
                text = str(int(matrix[i, j]))
                draw.text((box[0] + (cell - _text_width(draw, text, small)) / 2, box[1] + cell / 2 - 7), text,
                          fill="white" if s > 0.5 else TEXT_COLOUR, font=small)
    draw.text((label_w, top + n * cell + 8), "rows: requested / true label, columns: predicted; colour: row share",
              fill=(90, 90, 90), font=_font(10))
    return image


def hstack(images, gap=16):
    """Images side by side on white, top-aligned."""
    width = sum(i.width for i in images) + gap * (len(images) - 1)
    canvas = Image.new("RGB", (width, max(i.height for i in images)), "white")
    x = 0
    for image in images:
        canvas.paste(image, (x, 0))
        x += image.width + gap
    return canvas


def pair_grid(pairs, cell=112, columns=4, title=None):
    """``pairs`` = [(generated image, training image, caption)] -> grid of side-by-side pairs with captions."""
    font = _font(11)
    rows = max(1, math.ceil(len(pairs) / columns))
    pair_w, pair_h = 2 * cell + 4 + 14, cell + 34
    head = 30 if title else 0
    canvas = Image.new("RGB", (columns * pair_w + 10, head + rows * pair_h + 6), "white")
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((8, 8), title, fill=TEXT_COLOUR, font=_font(14))
    for k, (generated, real, caption) in enumerate(pairs):
        x, y = 8 + (k % columns) * pair_w, head + (k // columns) * pair_h
        for offset, image in ((0, generated), (cell + 4, real)):
            if image is None:
                draw.rectangle([x + offset, y, x + offset + cell - 1, y + cell - 1], outline=REAL_COLOUR)
                continue
            tile = to_pil([image])[0].convert("RGB")
            upscale = min(tile.size) < cell  # small images: keep their pixels visible
            tile = tile.resize((cell, cell), Image.Resampling.NEAREST if upscale else Image.Resampling.BICUBIC)
            canvas.paste(tile, (x + offset, y))
        draw.text((x, y + cell + 3), caption, fill=TEXT_COLOUR, font=font)
    return canvas
