"""Label Studio's brush RLE, the ``"format": "rle"`` value of a ``brushlabels`` region.

The format (as Label Studio's converter documents and reads it): the mask's RGBA pixels,
flattened to ``H * W * 4`` bytes, compressed as a bit stream written most significant bit first:

- 32 bits: the number of values ``N`` (``H * W * 4``);
- 5 bits: word size - 1 (8-bit values: 7);
- 4 x 4 bits: the four run-length field widths - 1 (we write 3, 4, 8, 16);
- then blocks until ``N`` values are read: 1 bit ``repeat``; 2 bits choosing a width; that many
  bits holding ``length - 1``; then one word (``repeat`` = 1: the value repeated ``length`` times)
  or ``length`` words (``repeat`` = 0: literal values);
- zero bits to a whole byte. The JSON holds the bytes as a list of ints.

A pixel belongs to the region when its alpha byte (the 4th) is non-zero; we write 255 in all four
channels of masked pixels, as Label Studio's own ``mask2rle`` does.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

WIDTHS = (3, 4, 8, 16)
WORD = 8


class BrushRLEError(ValueError):
    """A brush RLE that does not decode (truncated, or of another size)."""


def _runs(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(start index, value) of every run of equal values in a 1-D array."""
    change = np.flatnonzero(np.diff(values)) + 1
    starts = np.concatenate([[0], change])
    return starts, values[starts]


def encode(mask: np.ndarray) -> list[int]:
    """Brush RLE bytes of a bool [H, W] mask."""
    if mask.ndim != 2:
        raise ValueError(f"mask must be [H, W], got shape {mask.shape}")
    flat = np.repeat(mask.astype(np.uint8).reshape(-1) * 255, 4)
    total = flat.size
    starts, values = _runs(flat)
    ends = np.concatenate([starts[1:], [total]])
    bits = [f"{total:032b}", f"{WORD - 1:05b}", *(f"{w - 1:04b}" for w in WIDTHS)]
    longest = 1 << WIDTHS[-1]
    for start, end, value in zip(starts.tolist(), ends.tolist(), values.tolist(), strict=True):
        length = end - start
        while length > 0:
            chunk = min(length, longest)
            width = next(i for i, w in enumerate(WIDTHS) if chunk - 1 < (1 << w))
            bits.append(f"1{width:02b}{chunk - 1:0{WIDTHS[width]}b}{value:0{WORD}b}")
            length -= chunk
    text = "".join(bits)
    text += "0" * (-len(text) % 8)
    return list(int(text, 2).to_bytes(len(text) // 8, "big"))


def decode(data: Sequence[int], height: int, width: int) -> np.ndarray:
    """bool [height, width] mask of brush RLE bytes.

    Raises:
        BrushRLEError: the stream is truncated, malformed, or holds another number of values
            than ``height * width * 4``.
    """
    try:
        raw = np.asarray(list(data), dtype=np.int64)
    except (TypeError, ValueError):
        raise BrushRLEError("the rle is not a list of byte values") from None
    if raw.size < 9 or raw.min() < 0 or raw.max() > 255:
        raise BrushRLEError("the rle is not a list of byte values (0..255) with a header")
    bits = np.unpackbits(raw.astype(np.uint8))
    position = 0

    def read(count: int) -> int:
        nonlocal position
        if position + count > bits.size:
            raise BrushRLEError("the rle ends before all its values (truncated)")
        chunk = bits[position : position + count]
        position += count
        return int("".join("01"[b] for b in chunk) or "0", 2)

    total = read(32)
    expected = height * width * 4
    if total != expected:
        raise BrushRLEError(
            f"the rle holds {total} values, a {height}x{width} image needs {expected} "
            f"(an rle of another image size)"
        )
    word = read(5) + 1
    widths = [read(4) + 1 for _ in range(4)]
    out = np.zeros(total, dtype=np.uint8)
    i = 0
    while i < total:
        repeat = read(1)
        length = read(widths[read(2)]) + 1
        if i + length > total:
            raise BrushRLEError("the rle's runs add up to more values than its header says")
        if repeat:
            out[i : i + length] = read(word)
        else:
            for k in range(length):
                out[i + k] = read(word)
        i += length
    return out.reshape(height, width, 4)[:, :, 3] > 0
