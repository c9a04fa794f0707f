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
    "training_label": "training label",
    "pseudo_label": "pseudo-label",
    "ground_truth": "ground truth",
    "prediction": "prediction",
    "error": "error (white: wrong)",
    "disagreement": "disagreement (white)",
}
MIN_PANEL_WIDTH = 200  # small images are enlarged (nearest neighbour) so titles fit
TITLE_HEIGHT = 18
SWATCH = 12
GAP = 4
BACKGROUND = (255, 255, 255)
TEXT = (0, 0, 0)


def _font(size: int = 11) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def _panel(row: dict[str, Any], key: str) -> np.ndarray:
    """uint8 [H, W, 3] picture of one entry of a review row."""
    if key == "image":
        return np.ascontiguousarray(row["image"], dtype=np.uint8)
    mask = np.asarray(row[key])
    if key in BINARY_KEYS:
        return np.repeat((mask.astype(np.uint8) * 255)[..., None], 3, axis=2)
    return PALETTE[mask]


def _legend_ids(row: dict[str, Any], mask_keys: list[str]) -> list[int]:
    ids: set[int] = set()
    for key in mask_keys:
        if key not in BINARY_KEYS:
            ids |= {int(v) for v in np.unique(np.asarray(row[key]))}
    return sorted(ids, key=lambda i: (i == IGNORE_INDEX, i))


def compose(row: dict[str, Any], names: list[str]) -> np.ndarray:
    """One review row as a composite picture.

    ``row``: {"id": str, "image": uint8 [H, W, 3], <mask name>: uint8 [H, W] class ids (0/1 for
    "error" and "disagreement"), ...}; other entries ("boxes") are not drawn. ``names``: the
    names of label ids 0..K-1. Returns uint8 [H', W', 3]: a title above every panel (image,
    then the masks in the row's order), the panels enlarged by the same integer factor when
    narrower than ``MIN_PANEL_WIDTH``, and a legend (colour swatch and name of every class id
    shown, 255 as "ignore") below, wrapped to the composite's width.
    """
    mask_keys = [k for k in row if k not in ("id", "image", "boxes")]
    keys = ["image", *mask_keys]
    height, width = np.asarray(row["image"]).shape[:2]
    scale = max(1, -(-MIN_PANEL_WIDTH // max(width, 1)))
    panels = [_panel(row, k).repeat(scale, axis=0).repeat(scale, axis=1) for k in keys]
    panel_w, panel_h = width * scale, height * scale
    font = _font()
    total_w = len(panels) * panel_w + (len(panels) - 1) * GAP
    # The legend's entries, wrapped into lines no wider than the composite.
    entries = []
    for label_id in _legend_ids(row, mask_keys):
        name = (
            "ignore"
            if label_id == IGNORE_INDEX
            else (names[label_id] if label_id < len(names) else f"id {label_id}")
        )
        text_w = int(font.getlength(name)) if hasattr(font, "getlength") else 6 * len(name)
        entries.append((label_id, name, SWATCH + 4 + text_w + 12))
    lines: list[list[tuple[int, str, int]]] = [[]]
    used = 0
    for entry in entries:
        if lines[-1] and used + entry[2] > total_w:
            lines.append([])
            used = 0
        lines[-1].append(entry)
        used += entry[2]
    legend_h = (len(lines) * (SWATCH + GAP) + GAP) if entries else 0
    canvas = Image.new("RGB", (total_w, TITLE_HEIGHT + panel_h + legend_h), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    for i, (key, panel) in enumerate(zip(keys, panels, strict=True)):
        x = i * (panel_w + GAP)
        draw.text((x + 2, 3), TITLES.get(key, key.replace("_", " ")), fill=TEXT, font=font)
        canvas.paste(Image.fromarray(panel), (x, TITLE_HEIGHT))
    y = TITLE_HEIGHT + panel_h + GAP
    for line in lines:
        x = 2
        for label_id, name, entry_w in line:
            colour = tuple(int(c) for c in PALETTE[label_id])
            draw.rectangle((x, y, x + SWATCH - 1, y + SWATCH - 1), fill=colour, outline=TEXT)
            draw.text((x + SWATCH + 4, y), name, fill=TEXT, font=font)
            x += entry_w
        y += SWATCH + GAP
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
