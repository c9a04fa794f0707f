"""Reading folders of label PNGs (class-id maps), shared by ``evaluation`` and ``diagnosis``.

Only numpy and PIL at import: evaluation's worker processes import this and start fast.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from wsss_pl.errors import DataError


def read_label_array(path: str, role: str) -> np.ndarray:
    """uint8 [H, W] class ids of a 'P' or 'L' PNG; DataError naming the file otherwise."""
    try:
        with Image.open(path) as image:
            if image.mode not in ("P", "L"):
                raise DataError(
                    f"{role} file {path} has image mode {image.mode!r}; expected a palette ('P') "
                    "or greyscale ('L') PNG whose pixel values are class ids (not colours)"
                )
            return np.asarray(image, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
        raise DataError(f"{role} file {path} cannot be decoded ({error})") from error


def png_stems(directory: Path, role: str) -> dict[str, str]:
    """``{stem: path}`` of the ``*.png`` files of ``directory`` (hidden files left out)."""
    if not directory.is_dir():
        raise DataError(f"{role} directory {directory} does not exist")
    with os.scandir(directory) as entries:
        return {
            entry.name[:-4]: entry.path
            for entry in entries
            if entry.name.lower().endswith(".png") and not entry.name.startswith(".")
        }
