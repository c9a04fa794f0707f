"""The VOC colour map used for every palette PNG (labels, predictions, the cache). In the
storage / io layer so that the cache can paint its PNGs without the vocabularies; re-exported
by ``wsss_pl.classes``."""

from __future__ import annotations


def voc_palette(num_entries: int = 256) -> list[int]:
    """The standard VOC bitwise colour map as a flat [r, g, b, ...] list of 3 * num_entries ints."""
    palette: list[int] = []
    for index in range(num_entries):
        r = g = b = 0
        c = index
        for bit in range(8):
            r |= ((c >> 0) & 1) << (7 - bit)
            g |= ((c >> 1) & 1) << (7 - bit)
            b |= ((c >> 2) & 1) << (7 - bit)
            c >>= 3
        palette.extend((r, g, b))
    return palette
