"""Exclusion phrases: detected things whose masks are taken out of a class (the complement of
assist words).

VOC's dining table is annotated with everything on it, so the paper's assist words (plate, food,
glass...) paint those detections as table. A dataset whose annotation leaves them out wants the
opposite: ``exclusion_words: {diningtable: [plate, glass]}`` puts the words in the caption (their
detections map to their class like assist words) but their masks are not painted: the pixels of
the class they cover become background or 255 (``exclusion_fill``). Other classes' pixels under
an exclusion mask are left alone.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor

from wsss_pl.classes import IGNORE_INDEX, ClassVocabulary
from wsss_pl.errors import ConfigError, UnknownClassError

if TYPE_CHECKING:
    from wsss_pl.labeling.detectors.grounding import Detections

ExclusionFill = Literal["background", "ignore"]


def with_exclusion_phrases(
    vocabulary: ClassVocabulary, exclusion_words: Mapping[str, Sequence[str]] | None
) -> ClassVocabulary:
    """The vocabulary with each class's exclusion words added to its caption phrases.

    Raises:
        UnknownClassError: a class not in the vocabulary.
        ConfigError: an empty word, or a word that is also an assist word or the prompt name of
            that class.
    """
    if not exclusion_words:
        return vocabulary
    assist = {k: tuple(v) for k, v in vocabulary.assist_words.items()}
    for class_name, words in exclusion_words.items():
        if class_name not in vocabulary.class_names:
            raise UnknownClassError(
                f"exclusion_words: unknown class {class_name!r}; known classes: "
                f"{', '.join(vocabulary.class_names)}"
            )
        empty = [word for word in words if not str(word).strip()]
        if empty or isinstance(words, str):
            raise ConfigError(
                f"exclusion_words of {class_name!r}: {list(words) if empty else words!r} must be a "
                "list of non-empty words (an empty phrase would match every detection)"
            )
        own = {vocabulary.prompt_name(class_name), *assist.get(class_name, ())}
        clash = sorted(set(words) & own)
        if clash:
            raise ConfigError(
                f"exclusion_words of {class_name!r}: {clash} are also its prompt name or assist "
                "words; a phrase cannot both add to and remove from a class"
            )
        assist[class_name] = (*assist.get(class_name, ()), *words)
    return dataclasses.replace(vocabulary, assist_words=assist)


def excluded(
    labels: Tensor, phrases: Sequence[str], exclusion_words: Mapping[int, frozenset[str]]
) -> Tensor:
    """bool [N]: which detections (class ids ``labels`` [N], caption ``phrases``) are exclusions."""
    flags = [
        phrase in exclusion_words.get(int(label), frozenset())
        for label, phrase in zip(labels.tolist(), phrases, strict=True)
    ]
    return torch.tensor(flags, dtype=torch.bool, device=labels.device)


@dataclasses.dataclass
class Excluded:
    """The exclusion detections of one image: masks bool [M, H, W], class ids long [M], and a
    JSON record (label, phrase, box, rle) of each for the cache metadata."""

    masks: Tensor
    labels: Tensor
    records: list[dict[str, Any]]


def split_exclusions(
    found: Detections, masks: Tensor, exclusion_words: Mapping[int, frozenset[str]]
) -> tuple[Detections, Tensor, Excluded]:
    """Separate exclusion detections from the ones to paint: (kept detections, their masks
    bool [N', H, W], the excluded ones)."""
    removed = excluded(found.labels, found.phrases, exclusion_words)
    kept = removed.logical_not()
    flags = removed.tolist()
    from wsss_pl.labeling.storage.cache import encode_rle

    records = [
        {"label": int(c), "phrase": p, "box": [round(float(v), 2) for v in b.tolist()],
         "rle": encode_rle(m)}
        for c, p, b, m, r in zip(found.labels, found.phrases, found.boxes, masks, flags, strict=True)
        if r
    ]  # fmt: skip
    if not records:
        return found, masks, Excluded(masks[:0], found.labels[:0], [])
    kept_found = dataclasses.replace(
        found,
        boxes=found.boxes[kept],
        scores=found.scores[kept],
        labels=found.labels[kept],
        phrases=[p for p, r in zip(found.phrases, flags, strict=True) if not r],
    )
    return kept_found, masks[kept], Excluded(masks[removed], found.labels[removed], records)


def erase(label: Tensor, removed: Excluded, fill: ExclusionFill) -> Tensor:
    """Set the pixels of class ``removed.labels[i]`` inside ``removed.masks[i]`` to 0 or 255.

    Args:
        label: uint8 [H, W] merged map (exclusion masks not painted).
        removed: the exclusion masks and the class each one is removed from.
        fill: ``background`` (0) or ``ignore`` (255).

    Returns:
        uint8 [H, W] (``label`` itself when there is nothing to remove).
    """
    if fill not in ("background", "ignore"):
        raise ValueError(f"exclusion_fill must be 'background' or 'ignore', got {fill!r}")
    if not removed.records:
        return label
    value = 0 if fill == "background" else IGNORE_INDEX
    out = label.clone()
    for mask, class_id in zip(removed.masks, removed.labels.tolist(), strict=True):
        out[mask.bool() & (label == class_id)] = value
    return out
