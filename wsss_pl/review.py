"""Composite review images that can be read without any logger's UI: the image and its label
maps side by side, each panel titled, and a legend of the class colours shown.

``compose(row, names)`` -> uint8 [H', W', 3]; ``write_composites`` saves one PNG per row. The
callbacks write them for every logger (W&B online or offline, CSV, TensorBoard) under the run's
``review/`` folder, which the CLI's summary names.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from wsss_pl.classes import IGNORE_INDEX, voc_palette

PALETTE = np.array(voc_palette(), dtype=np.uint8).reshape(256, 3)
BINARY_KEYS = ("error", "disagreement")  # 0/1 maps: shown white where the two maps differ
TITLES = {
    "image": "image",
    "label": "training label",
    "training_label": "training label",
    "pseudo_label": "pseudo-label",
    "ground_truth": "ground truth",
    "prediction": "prediction",
    "error": "error (white: wrong)",
    "disagreement": "disagreement (white)",
}
# Panels that show the detector's boxes when the row has them, first present wins.
BOX_PANELS = ("label", "pseudo_label", "training_label")
NOT_PANELS = ("id", "image", "boxes", "notes")  # row entries that are not mask panels
MIN_PANEL_WIDTH = 240  # small images are enlarged (nearest neighbour) so titles fit
FONT_SIZE = 18
TITLE_HEIGHT = 26
SMALL_FONT_SIZE = 14
SWATCH = 16
GAP = 6
BACKGROUND = (255, 255, 255)
EMPTY = (205, 205, 205)  # a panel without data
TEXT = (0, 0, 0)
BOX_OUTLINE = (255, 255, 255)


def _font(size: int = FONT_SIZE) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def _text_width(font: ImageFont.ImageFont | ImageFont.FreeTypeFont, text: str) -> int:
    return int(font.getlength(text)) if hasattr(font, "getlength") else 6 * len(text)


def _panel(row: dict[str, Any], key: str, height: int, width: int) -> np.ndarray:
    """uint8 [H, W, 3] picture of one entry of a review row (grey when it has no data)."""
    if key == "image":
        return np.ascontiguousarray(row["image"], dtype=np.uint8)
    if row.get(key) is None:
        return np.full((height, width, 3), EMPTY, dtype=np.uint8)
    mask = np.asarray(row[key])
    if key in BINARY_KEYS:
        return np.repeat((mask.astype(np.uint8) * 255)[..., None], 3, axis=2)
    return PALETTE[mask]


def _legend_ids(row: dict[str, Any], mask_keys: list[str]) -> list[int]:
    ids: set[int] = set()
    for key in mask_keys:
        if key not in BINARY_KEYS and row.get(key) is not None:
            ids |= {int(v) for v in np.unique(np.asarray(row[key]))}
    return sorted(ids, key=lambda i: (i == IGNORE_INDEX, i))


def _wrap(text: str, font: Any, width: int) -> list[str]:
    """``text`` broken at spaces into lines no wider than ``width`` pixels (a long word alone)."""
    lines: list[str] = []
    for word in text.split():
        if lines and _text_width(font, f"{lines[-1]} {word}") <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines


def _draw_boxes(
    draw: ImageDraw.ImageDraw,
    boxes: list[dict[str, Any]],
    origin: tuple[int, int],
    scale: int,
    size: tuple[int, int],
    font: Any,
) -> None:
    """Each detection's box (class colour, white outline) and 'class score' on its top edge;
    ``boxes`` are pixel xyxy in the row's image, ``size`` (H, W) clips them to the panel."""
    left, top = origin
    height, width = size
    for inst in boxes:
        x0, y0, x1, y1 = (float(v) for v in inst["box"])
        x0, x1 = max(0.0, min(x0, width)), max(0.0, min(x1, width))
        y0, y1 = max(0.0, min(y0, height)), max(0.0, min(y1, height))
        if x1 - x0 < 1 or y1 - y0 < 1:
            continue  # outside the panel (e.g. cropped away by augmentation)
        rect = (left + x0 * scale, top + y0 * scale, left + x1 * scale - 1, top + y1 * scale - 1)
        colour = tuple(int(c) for c in PALETTE[int(inst.get("label", 0)) % 256])
        draw.rectangle(rect, outline=BOX_OUTLINE, width=4)
        draw.rectangle(rect, outline=colour, width=2)
        caption = f"{inst.get('class', inst.get('label'))} {float(inst.get('score', 0.0)):.2f}"
        text_w = _text_width(font, caption)
        tx = min(rect[0], left + width * scale - text_w - 4)
        ty = max(top, rect[1] - SMALL_FONT_SIZE - 4)
        draw.rectangle((tx, ty, tx + text_w + 4, ty + SMALL_FONT_SIZE + 3), fill=colour)
        draw.text(
            (tx + 2, ty + 1), caption, fill=BOX_OUTLINE if sum(colour) < 300 else TEXT, font=font
        )


def compose(row: dict[str, Any], names: list[str]) -> np.ndarray:
    """One review row as a composite picture.

    ``row``: {"id": str, "image": uint8 [H, W, 3], <panel name>: uint8 [H, W] class ids (0/1 for
    "error" and "disagreement") or None (no data: a grey panel saying so), ..., optional "notes":
    {panel name: why it has no data}, optional "boxes": the detector's instances (pixel xyxy
    "box", "label", "class", "score") drawn on the first of ``BOX_PANELS`` present}. ``names``:
    the names of label ids 0..K-1. Returns uint8 [H', W', 3]: a title above every panel (image,
    then the masks in the row's order), the panels enlarged by the same integer factor when
    narrower than ``MIN_PANEL_WIDTH``, and a legend (colour swatch and name of every class id
    shown, 255 as "ignore") below, wrapped to the composite's width.
    """
    mask_keys = [k for k in row if k not in NOT_PANELS]
    keys = ["image", *mask_keys]
    height, width = np.asarray(row["image"]).shape[:2]
    scale = max(1, -(-MIN_PANEL_WIDTH // max(width, 1)))
    panels = [
        _panel(row, k, height, width).repeat(scale, axis=0).repeat(scale, axis=1) for k in keys
    ]
    panel_w, panel_h = width * scale, height * scale
    font, small = _font(), _font(SMALL_FONT_SIZE)
    total_w = len(panels) * panel_w + (len(panels) - 1) * GAP
    # The legend's entries, wrapped into lines no wider than the composite.
    entries = []
    for label_id in _legend_ids(row, mask_keys):
        name = (
            "ignore"
            if label_id == IGNORE_INDEX
            else (names[label_id] if label_id < len(names) else f"id {label_id}")
        )
        entries.append((label_id, name, SWATCH + 4 + _text_width(font, name) + 14))
    lines: list[list[tuple[int, str, int]]] = [[]]
    used = 0
    for entry in entries:
        if lines[-1] and used + entry[2] > total_w:
            lines.append([])
            used = 0
        lines[-1].append(entry)
        used += entry[2]
    line_h = max(SWATCH, FONT_SIZE) + GAP
    legend_h = (len(lines) * line_h + GAP) if entries else 0
    canvas = Image.new("RGB", (total_w, TITLE_HEIGHT + panel_h + legend_h), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    notes = row.get("notes") or {}
    box_panel = next((k for k in BOX_PANELS if row.get(k) is not None), None)
    for i, (key, panel) in enumerate(zip(keys, panels, strict=True)):
        x = i * (panel_w + GAP)
        title = TITLES.get(key, key.replace("_", " "))
        if key == box_panel and row.get("boxes"):
            title += " + boxes"
        draw.text((x + 2, 3), title, fill=TEXT, font=font)
        canvas.paste(Image.fromarray(panel), (x, TITLE_HEIGHT))
        if key != "image" and row.get(key) is None:  # say why there is nothing to show
            note = notes.get(key) or f"no {title}"
            text_y = TITLE_HEIGHT + 6
            for text_line in _wrap(note, small, panel_w - 12):
                draw.text((x + 6, text_y), text_line, fill=TEXT, font=small)
                text_y += SMALL_FONT_SIZE + 4
        if key == box_panel and row.get("boxes"):
            _draw_boxes(draw, row["boxes"], (x, TITLE_HEIGHT), scale, (height, width), small)
    y = TITLE_HEIGHT + panel_h + GAP
    for line in lines:
        x = 2
        for label_id, name, entry_w in line:
            colour = tuple(int(c) for c in PALETTE[label_id])
            draw.rectangle((x, y, x + SWATCH - 1, y + SWATCH - 1), fill=colour, outline=TEXT)
            draw.text((x + SWATCH + 4, y - 2), name, fill=TEXT, font=font)
            x += entry_w
        y += line_h
    return np.asarray(canvas)


def safe_name(text: str) -> str:
    """``text`` usable as one file-name component (path separators and odd characters -> _)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "_"


def write_composites(
    directory: Path, key: str, rows: list[dict[str, Any]], names: list[str], step: int
) -> list[Path]:
    """``compose`` every row into ``directory/<key>_step<step>_<id>.png``; returns the paths."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for row in rows:
        path = directory / f"{safe_name(key)}_step{step:06d}_{safe_name(str(row['id']))}.png"
        Image.fromarray(compose(row, names)).save(path)
        paths.append(path)
    return paths
