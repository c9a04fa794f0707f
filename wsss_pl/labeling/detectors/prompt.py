"""Detector captions from image-level labels, and the map from caption tokens back to classes.

A caption lists the image's classes in vocabulary order; each class contributes its name and then
its assist words. Two caption styles:

- ``paper`` (the released code, weixuansun/wsss_sam): raw class names (``pottedplant``), phrases
  joined with the vocabulary's ``caption_separator`` (``"."`` for VOC, ``" . "`` for COCO),
  lower-cased, ``"."`` appended: ``"horse.halter.saddle.pottedplant."``.
- ``prompt_names``: readable prompt names (``potted plant``), every phrase followed by ``" ."``:
  ``"horse . halter . saddle . potted plant ."``.

Two rules give a box its class:

- ``argmax_word`` (the released ``get_phrases_from_posmap_2``): the arg-max token over all caption
  positions (``[CLS]``, ``[SEP]`` and ``"."`` included) grown left and right to the nearest
  special or ``"."`` token, decoded, and looked up among the class names and assist words; the
  text threshold plays no part (the released code passes it but never reads it). An arg-max on a
  special or ``"."`` token, or a word that is no class name or assist word, leaves the box
  unmatched.
- ``best_class_token``: among the tokens inside a phrase scoring above the text threshold, the
  best one wins. Tokens are mapped by *position*: each token's character span (offset mapping) is
  looked up among the phrase spans, so every WordPiece of ``pot ##ted ##pl ##ant`` means
  ``pottedplant`` and a partial word ("fire hydr") never becomes a class of its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from wsss_pl.classes import ClassVocabulary
from wsss_pl.labeling.rules import CaptionStyle

SEPARATOR = " . "
TERMINATOR = " ."
# Token ids that end a word in the released get_phrases_from_posmap_2:
# [PAD], [UNK], [CLS], [SEP], [MASK] and ".".
WORD_BOUNDARY_IDS = frozenset({0, 100, 101, 102, 103, 1012})
# Grounding DINO splits captions into phrases at these characters; a phrase may not contain them.
_DELIMITERS = (".", "?")


@dataclass(frozen=True)
class Phrase:
    """One phrase of a caption: ``caption.text[char_start:char_end] == text``.

    ``label_id`` is the class (1..C) the phrase stands for; ``is_assist`` marks an assist word.
    """

    text: str
    label_id: int
    char_start: int
    char_end: int
    is_assist: bool


@dataclass(frozen=True, eq=False)
class Caption:
    """A detector caption and the class of each of its tokens.

    Attributes:
        text: the caption, e.g. ``"dog . sofa ."``.
        phrases: its phrases in caption order.
        token_labels: long [T], label id (1..C) of every token of the tokenised caption including
            ``[CLS]`` and ``[SEP]``; 0 for special tokens and ``"."``.
        token_phrases: long [T], index into ``phrases`` of every token, -1 where the label is 0.
        word_labels: long [T], the class (0 = none) of the word the ``argmax_word`` rule grows
            from each token position.
        word_texts: the decoded word of each position (``""`` where the released code would
            have crashed: an arg-max on the final ``[SEP]``).
    """

    text: str
    phrases: tuple[Phrase, ...]
    token_labels: Tensor
    token_phrases: Tensor
    word_labels: Tensor
    word_texts: tuple[str, ...]

    @property
    def label_ids(self) -> tuple[int, ...]:
        """The classes this caption prompts for, in caption order, without repeats."""
        return tuple(dict.fromkeys(p.label_id for p in self.phrases))


def _class_phrases(vocabulary: ClassVocabulary, class_name: str, style: CaptionStyle) -> list[str]:
    name = class_name if style == "paper" else vocabulary.prompt_name(class_name)
    phrases = [name, *vocabulary.assist_words.get(class_name, ())]
    for phrase in phrases:
        if not phrase.strip() or any(d in phrase for d in _DELIMITERS):
            raise ValueError(
                f"vocabulary {vocabulary.name!r}, class {class_name!r}: phrase {phrase!r} is empty "
                f"or contains one of {_DELIMITERS}, which Grounding DINO reads as phrase breaks"
            )
    phrases = [p.strip() for p in phrases]
    return [p.lower() for p in phrases] if style == "paper" else phrases


def class_phrases(vocabulary: ClassVocabulary, class_name: str, style: CaptionStyle) -> list[str]:
    """A class's caption phrases (its name or prompt name, then its assist words), checked."""
    return _class_phrases(vocabulary, class_name, style)


def word_lookup(vocabulary: ClassVocabulary) -> dict[str, int]:
    """Lower-cased class names, prompt names and assist words -> class id (``argmax_word``).

    The released code's ``class_dict``: class names first, then assist words (a later entry wins).
    """
    lookup = {name.lower(): i + 1 for i, name in enumerate(vocabulary.class_names)}
    for name, prompt in vocabulary.prompt_names.items():
        lookup[prompt.lower()] = vocabulary.label_id(name)
    for name, words in vocabulary.assist_words.items():
        for word in words:
            lookup[word.strip().lower()] = vocabulary.label_id(name)
    return lookup


def _grow_word(input_ids: list[int], pos: int) -> list[int] | None:
    """Positions of the word around ``pos`` as ``get_phrases_from_posmap_2`` grows it.

    The arg-max position is always kept, even a boundary token; the word then grows over its
    neighbours (so an arg-max on ``"."`` joins the words on both sides and matches nothing).
    None where the released loop would index past the end (an arg-max on ``[SEP]``).
    """
    positions = [pos]
    right = pos + 1
    while True:
        if right >= len(input_ids):
            return None
        if input_ids[right] in WORD_BOUNDARY_IDS:
            break
        positions.append(right)
        right += 1
    left = pos - 1
    while input_ids[left] not in WORD_BOUNDARY_IDS:  # index -1 is [SEP]: Python wraps, as there
        positions.insert(0, left)
        left -= 1
    return positions


def _make_caption(
    groups: Sequence[tuple[int, list[str]]],
    tokenizer: PreTrainedTokenizerBase,
    style: CaptionStyle,
    separator: str,
    lookup: dict[str, int],
) -> Caption:
    phrases: list[Phrase] = []
    text = ""
    joiner = separator if style == "paper" else SEPARATOR
    for label_id, texts in groups:
        for i, phrase in enumerate(texts):
            if text:
                text += joiner
            phrases.append(Phrase(phrase, label_id, len(text), len(text) + len(phrase), i > 0))
            text += phrase
    if style == "paper":  # get_grounding_output: lower(), strip(), "." appended unless there
        text = text.strip()
        if not text.endswith("."):
            text += "."
    else:
        text += TERMINATOR
    encoding = tokenizer(text, return_offsets_mapping=True, return_special_tokens_mask=True)
    token_labels = torch.zeros(len(encoding["input_ids"]), dtype=torch.long)
    token_phrases = torch.full_like(token_labels, -1)
    spans = encoding["offset_mapping"]
    for index, ((start, end), special) in enumerate(
        zip(spans, encoding["special_tokens_mask"], strict=True)
    ):
        if special or start == end:
            continue
        for phrase_index, phrase in enumerate(phrases):
            # Phrase spans are whole words, so containment never maps a partial word.
            if phrase.char_start <= start and end <= phrase.char_end:
                token_labels[index] = phrase.label_id
                token_phrases[index] = phrase_index
                break
    input_ids = list(encoding["input_ids"])
    word_texts = []
    for pos in range(len(input_ids)):
        positions = _grow_word(input_ids, pos)
        word_texts.append(
            "" if positions is None else tokenizer.decode([input_ids[i] for i in positions])
        )
    word_labels = torch.tensor([lookup.get(w, 0) if w else 0 for w in word_texts], dtype=torch.long)
    return Caption(
        text, tuple(phrases), token_labels, token_phrases, word_labels, tuple(word_texts)
    )


def build_captions(
    vocabulary: ClassVocabulary,
    present: Sequence[str],
    tokenizer: PreTrainedTokenizerBase,
    max_tokens: int = 256,
    style: CaptionStyle = "prompt_names",
) -> list[Caption]:
    """Captions prompting for the classes ``present`` in one image.

    Classes appear in vocabulary order (for COCO the released code used ``list(set(names))``,
    an order that changes with Python's hash seed; vocabulary order is the deterministic choice). When the tokenised caption (with ``[CLS]``/``[SEP]``)
    would exceed ``max_tokens`` (Grounding DINO reads at most 256), the classes are split over
    several captions at class boundaries: a class and its assist words always share a caption.

    Args:
        vocabulary: the dataset's classes, prompt names and assist words.
        present: class names of the image (any order; repeats ignored).
        tokenizer: the bert-base-uncased fast tokenizer (``bert_tokenizer()``).
        max_tokens: most tokens per caption, special tokens included.
        style: ``paper`` (the released captions) or ``prompt_names`` (module docstring).

    Returns:
        The captions, empty when ``present`` is empty.

    Raises:
        UnknownClassError: a name is not in the vocabulary.
        ValueError: one class's phrases alone exceed ``max_tokens``.
    """
    label_ids = sorted({vocabulary.label_id(name) for name in present})
    groups = [
        (i, _class_phrases(vocabulary, vocabulary.class_names[i - 1], style)) for i in label_ids
    ]
    lookup = word_lookup(vocabulary)

    def make(chosen: Sequence[tuple[int, list[str]]]) -> Caption:
        return _make_caption(chosen, tokenizer, style, vocabulary.caption_separator, lookup)

    captions: list[Caption] = []
    current: list[tuple[int, list[str]]] = []
    done: Caption | None = None  # the caption of ``current``
    for group in groups:
        candidate = make([*current, group])
        if len(candidate.token_labels) > max_tokens and done is not None:
            captions.append(done)  # close the caption before this class
            current, candidate = [], make([group])
        if len(candidate.token_labels) > max_tokens:
            raise ValueError(
                f"class {vocabulary.class_names[group[0] - 1]!r} with its assist words needs "
                f"{len(candidate.token_labels)} tokens, more than max_tokens={max_tokens}"
            )
        current.append(group)
        done = candidate
    if done is not None:
        captions.append(done)
    return captions


def assign_boxes_to_classes(
    token_scores: Tensor, caption: Caption, text_threshold: float
) -> tuple[Tensor, list[str]]:
    """The class and phrase of each box from its scores over the caption's tokens.

    Rule: among the tokens that belong to a phrase (not ``[CLS]``, ``[SEP]``, ``"."`` or padding)
    and score strictly above ``text_threshold``, the highest-scoring token wins (ties: the first
    token); the box takes that token's class and phrase. Equivalently, each class scores the max
    over its tokens and the best class wins. A box with no such token gets label 0 and phrase
    ``""``; the caller counts those boxes rather than dropping them silently.

    Args:
        token_scores: float [N, T'] sigmoid scores of N boxes over the caption's token positions;
            T' >= T (e.g. the model's 256 text slots); columns past T count as padding.
        caption: the caption the scores were computed for.
        text_threshold: minimum token score (exclusive); the paper uses 0.25.

    Returns:
        labels: long [N] on ``token_scores.device``, 0 = no class, else 1..C.
        phrases: the winning phrase text of each box (``""`` for label 0).
    """
    num_tokens = caption.token_labels.numel()
    if token_scores.dim() != 2 or token_scores.shape[1] < num_tokens:
        raise ValueError(
            f"token_scores must be [N, T>={num_tokens}] for caption {caption.text!r}, "
            f"got {tuple(token_scores.shape)}"
        )
    pad = token_scores.shape[1] - num_tokens
    device = token_scores.device
    token_labels = torch.nn.functional.pad(caption.token_labels, (0, pad)).to(device)
    token_phrases = torch.nn.functional.pad(caption.token_phrases, (0, pad), value=-1).to(device)
    valid = (token_labels > 0) & (token_scores > text_threshold)
    best = token_scores.masked_fill(~valid, float("-inf")).argmax(dim=1)
    hit = valid.any(dim=1)
    labels = torch.where(hit, token_labels[best], torch.zeros_like(best))
    phrase_index = torch.where(hit, token_phrases[best], torch.full_like(best, -1)).tolist()
    phrases = [caption.phrases[i].text if i >= 0 else "" for i in phrase_index]
    return labels, phrases


def assign_boxes_by_argmax_word(token_scores: Tensor, caption: Caption) -> tuple[Tensor, list[str]]:
    """The class and word of each box by the released code's rule (``argmax_word``).

    The arg-max over all T' positions (first on ties, as ``Tensor.argmax``) picks the word grown
    from it (``Caption.word_labels``); positions past the caption (padding) match nothing.

    Args:
        token_scores: float [N, T'] sigmoid scores of N boxes, T' >= T (e.g. 256 text slots).
        caption: the caption the scores were computed for.

    Returns:
        labels: long [N] on ``token_scores.device``, 0 = unmatched, else 1..C.
        phrases: the decoded word of each box (also for unmatched boxes, ``""`` past the caption).
    """
    num_tokens = caption.word_labels.numel()
    if token_scores.dim() != 2 or token_scores.shape[1] < num_tokens:
        raise ValueError(
            f"token_scores must be [N, T>={num_tokens}] for caption {caption.text!r}, "
            f"got {tuple(token_scores.shape)}"
        )
    best = token_scores.argmax(dim=1).tolist() if len(token_scores) else []
    labels = [int(caption.word_labels[i]) if i < num_tokens else 0 for i in best]
    phrases = [caption.word_texts[i] if i < num_tokens else "" for i in best]
    return torch.tensor(labels, dtype=torch.long, device=token_scores.device), phrases
