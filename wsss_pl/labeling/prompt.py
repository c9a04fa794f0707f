"""Detector captions from image-level labels, and the map from caption tokens back to classes.

A caption lists the image's classes in vocabulary order; each class contributes its prompt name
and then its assist words, every phrase followed by ``" ."`` (``"horse . halter . saddle ."``).
Classes are mapped back by token *position*, not by decoding text: each token's character span
(from the tokenizer's offset mapping) is looked up among the phrase spans, so every WordPiece of
``pot ##ted ##pl ##ant`` means ``pottedplant``, an assist word means its parent class, and a
partial word ("fire hydr") can never become a class of its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from wsss_pl.classes import ClassVocabulary

SEPARATOR = " . "
TERMINATOR = " ."
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
    """

    text: str
    phrases: tuple[Phrase, ...]
    token_labels: Tensor
    token_phrases: Tensor

    @property
    def label_ids(self) -> tuple[int, ...]:
        """The classes this caption prompts for, in caption order, without repeats."""
        return tuple(dict.fromkeys(p.label_id for p in self.phrases))


def _class_phrases(vocabulary: ClassVocabulary, class_name: str) -> list[str]:
    phrases = [vocabulary.prompt_name(class_name), *vocabulary.assist_words.get(class_name, ())]
    for phrase in phrases:
        if not phrase.strip() or any(d in phrase for d in _DELIMITERS):
            raise ValueError(
                f"vocabulary {vocabulary.name!r}, class {class_name!r}: phrase {phrase!r} is empty "
                f"or contains one of {_DELIMITERS}, which Grounding DINO reads as phrase breaks"
            )
    return [p.strip() for p in phrases]


def _make_caption(
    groups: Sequence[tuple[int, list[str]]], tokenizer: PreTrainedTokenizerBase
) -> Caption:
    phrases: list[Phrase] = []
    text = ""
    for label_id, texts in groups:
        for i, phrase in enumerate(texts):
            if text:
                text += SEPARATOR
            phrases.append(Phrase(phrase, label_id, len(text), len(text) + len(phrase), i > 0))
            text += phrase
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
    return Caption(text, tuple(phrases), token_labels, token_phrases)


def build_captions(
    vocabulary: ClassVocabulary,
    present: Sequence[str],
    tokenizer: PreTrainedTokenizerBase,
    max_tokens: int = 256,
) -> list[Caption]:
    """Captions prompting for the classes ``present`` in one image.

    Classes appear in vocabulary order. When the tokenised caption (with ``[CLS]``/``[SEP]``)
    would exceed ``max_tokens`` (Grounding DINO reads at most 256), the classes are split over
    several captions at class boundaries: a class and its assist words always share a caption.

    Args:
        vocabulary: the dataset's classes, prompt names and assist words.
        present: class names of the image (any order; repeats ignored).
        tokenizer: the bert-base-uncased fast tokenizer (``bert_tokenizer()``).
        max_tokens: most tokens per caption, special tokens included.

    Returns:
        The captions, empty when ``present`` is empty.

    Raises:
        UnknownClassError: a name is not in the vocabulary.
        ValueError: one class's phrases alone exceed ``max_tokens``.
    """
    label_ids = sorted({vocabulary.label_id(name) for name in present})
    groups = [(i, _class_phrases(vocabulary, vocabulary.class_names[i - 1])) for i in label_ids]
    captions: list[Caption] = []
    current: list[tuple[int, list[str]]] = []
    done: Caption | None = None  # the caption of ``current``
    for group in groups:
        candidate = _make_caption([*current, group], tokenizer)
        if len(candidate.token_labels) > max_tokens and done is not None:
            captions.append(done)  # close the caption before this class
            current, candidate = [], _make_caption([group], tokenizer)
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
