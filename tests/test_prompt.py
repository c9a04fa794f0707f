"""Captions and the token -> class map, on the real bert-base-uncased vocabulary."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from wsss_pl.classes import COCO, VOC, VOC_CLASSES, ClassVocabulary
from wsss_pl.errors import UnknownClassError, WeightsError
from wsss_pl.labeling.detectors import tokenizer as tokenizer_module
from wsss_pl.labeling.detectors.prompt import Caption, assign_boxes_to_classes, build_captions
from wsss_pl.labeling.detectors.tokenizer import bert_tokenizer

# COCO with assist words, long enough to overflow Grounding DINO's 256 text tokens.
COCO_ASSIST = ClassVocabulary(
    name="coco_assist",
    class_names=COCO.class_names,
    assist_words={name: (f"small {name}", f"large {name}") for name in COCO.class_names},
)


@pytest.fixture(scope="module")
def tokenizer():
    return bert_tokenizer()


def tokens_of(caption: Caption, tokenizer) -> list[str]:
    return tokenizer.convert_ids_to_tokens(tokenizer(caption.text)["input_ids"])


def check_token_map(caption: Caption, tokenizer, vocabulary: ClassVocabulary) -> None:
    """Every token inside a phrase means that phrase's class; everything else means 0."""
    encoding = tokenizer(caption.text, return_offsets_mapping=True)
    tokens = tokenizer.convert_ids_to_tokens(encoding["input_ids"])
    assert len(tokens) == caption.token_labels.numel() == caption.token_phrases.numel()
    for phrase in caption.phrases:
        assert caption.text[phrase.char_start : phrase.char_end] == phrase.text
        inside = [
            i
            for i, (s, e) in enumerate(encoding["offset_mapping"])
            if s < e and phrase.char_start <= s and e <= phrase.char_end
        ]
        assert inside, f"phrase {phrase.text!r} has no token"
        assert caption.token_labels[inside].tolist() == [phrase.label_id] * len(inside)
        assert {caption.phrases[j].text for j in caption.token_phrases[inside].tolist()} == {
            phrase.text
        }
    for i, token in enumerate(tokens):
        if token in ("[CLS]", "[SEP]", "."):
            assert caption.token_labels[i] == 0 and caption.token_phrases[i] == -1
        else:
            assert 1 <= caption.token_labels[i] <= len(vocabulary.class_names)


def test_packaged_tokenizer_is_bert_base_uncased(tokenizer) -> None:
    assert len(tokenizer) == 30522
    assert tokenizer.tokenize("pottedplant") == ["pot", "##ted", "##pl", "##ant"]
    assert tokenizer("dog . sofa .")["input_ids"] == [101, 3899, 1012, 10682, 1012, 102]
    long_text = " . ".join(["fire hydrant"] * 100) + " ."
    assert len(tokenizer(long_text)["input_ids"]) == 402  # the package's 128-token cap is lifted


def test_tokenizer_rejects_a_wrong_vocabulary(tmp_path: Path, monkeypatch) -> None:
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "dog"]) + "\n")
    with pytest.raises(WeightsError, match="not bert-base-uncased"):
        bert_tokenizer(tmp_path)  # a model dir with its own (wrong) tokenizer
    monkeypatch.setattr(tokenizer_module, "packaged_vocab_dir", lambda: tmp_path)
    with pytest.raises(WeightsError, match="md5"):
        bert_tokenizer()


def test_caption_text_follows_vocabulary_order_with_assist_words(tokenizer) -> None:
    (caption,) = build_captions(VOC, ["sofa", "dog", "dog"], tokenizer)
    assert caption.text == "dog . sofa ."
    assert [(p.text, p.label_id, p.is_assist) for p in caption.phrases] == [
        ("dog", 12, False),
        ("sofa", 18, False),
    ]
    (caption,) = build_captions(VOC, ["horse"], tokenizer)
    assert caption.text == "horse . halter . saddle ."
    assert tokens_of(caption, tokenizer)[3:5] == ["halt", "##er"]
    assert caption.token_labels.tolist() == [0, 13, 0, 13, 13, 0, 13, 0, 0]
    assert [p.is_assist for p in caption.phrases] == [False, True, True]
    (caption,) = build_captions(VOC, ["tvmonitor"], tokenizer)
    assert caption.text == "tv monitor . tv . monitor ."
    assert build_captions(VOC, [], tokenizer) == []


@pytest.mark.parametrize("vocabulary", [VOC, COCO], ids=["voc", "coco"])
def test_every_class_maps_back_to_itself(tokenizer, vocabulary: ClassVocabulary) -> None:
    for name in vocabulary.class_names:
        (caption,) = build_captions(vocabulary, [name], tokenizer)
        check_token_map(caption, tokenizer, vocabulary)
        assert set(caption.token_labels.tolist()) == {0, vocabulary.label_id(name)}
    (caption,) = build_captions(vocabulary, vocabulary.class_names, tokenizer)
    check_token_map(caption, tokenizer, vocabulary)
    assert caption.label_ids == tuple(range(1, len(vocabulary.class_names) + 1))


def test_raw_voc_names_map_every_wordpiece(tokenizer) -> None:
    raw = ClassVocabulary(name="raw", class_names=VOC_CLASSES)
    (caption,) = build_captions(raw, ["pottedplant", "diningtable", "tvmonitor"], tokenizer)
    assert tokens_of(caption, tokenizer) == [
        "[CLS]", "dining", "##table", ".", "pot", "##ted", "##pl", "##ant", ".",
        "tv", "##mon", "##itor", ".", "[SEP]",
    ]  # fmt: skip
    assert caption.token_labels.tolist() == [0, 11, 11, 0, 16, 16, 16, 16, 0, 20, 20, 20, 0, 0]
    (caption,) = build_captions(COCO, ["fire hydrant"], tokenizer)
    assert tokens_of(caption, tokenizer) == ["[CLS]", "fire", "hydra", "##nt", ".", "[SEP]"]
    assert caption.token_labels.tolist() == [0, 11, 11, 11, 0, 0]


def test_long_captions_split_at_class_boundaries(tokenizer) -> None:
    assert len(build_captions(COCO_ASSIST, COCO.class_names, tokenizer)) > 1  # default 256
    for max_tokens in (256, 40, 16):
        captions = build_captions(COCO_ASSIST, COCO.class_names, tokenizer, max_tokens)
        assert all(c.token_labels.numel() <= max_tokens for c in captions)
        seen = [label for c in captions for label in c.label_ids]
        assert seen == list(range(1, 81))  # each class in exactly one caption, in order
        for before, after in zip(
            captions, captions[1:], strict=False
        ):  # greedy: the next class did not fit
            names = [COCO.class_names[i - 1] for i in (*before.label_ids, after.label_ids[0])]
            assert len(build_captions(COCO_ASSIST, names, tokenizer, max_tokens)) == 2
        for c in captions:
            check_token_map(c, tokenizer, COCO_ASSIST)
            for label in c.label_ids:
                assert [p.text for p in c.phrases if p.label_id == label] == [
                    COCO.class_names[label - 1],
                    *COCO_ASSIST.assist_words[COCO.class_names[label - 1]],
                ]
    assert len(build_captions(COCO_ASSIST, COCO.class_names, tokenizer, 16)) > 40


def test_caption_errors(tokenizer) -> None:
    with pytest.raises(UnknownClassError, match="valid names"):
        build_captions(VOC, ["dog", "unicorn"], tokenizer)
    with pytest.raises(ValueError, match="max_tokens=6"):
        build_captions(VOC, ["horse"], tokenizer, max_tokens=6)
    dotted = ClassVocabulary(name="dotted", class_names=("dog",), prompt_names={"dog": "st. dog"})
    with pytest.raises(ValueError, match="phrase breaks"):
        build_captions(dotted, ["dog"], tokenizer)


def test_assign_boxes_to_classes(tokenizer) -> None:
    (caption,) = build_captions(VOC, ["dog", "horse"], tokenizer)
    # [CLS] dog . horse . halt ##er . saddle . [SEP]
    assert caption.token_labels.tolist() == [0, 12, 0, 13, 0, 13, 13, 0, 13, 0, 0]
    scores = torch.zeros(6, 256)  # the model's 256 text slots; padding columns score 0
    scores[0, [1, 3]] = torch.tensor([0.9, 0.5])  # dog wins over horse
    scores[1, [1, 6]] = torch.tensor([0.3, 0.6])  # "##er" of assist word "halter" -> horse
    scores[2, [0, 2, 10]] = 0.95  # only [CLS], "." and [SEP]: no class
    scores[3, 1] = 0.25  # exactly at the threshold: not above it
    scores[4, [1, 8]] = 0.7  # tie: the first token wins
    scores[5, [2, 8]] = torch.tensor([0.99, 0.26])  # separator ignored, saddle above threshold
    labels, phrases = assign_boxes_to_classes(scores, caption, text_threshold=0.25)
    assert labels.tolist() == [12, 13, 0, 0, 12, 13]
    assert labels.dtype == torch.long
    assert phrases == ["dog", "halter", "", "", "dog", "saddle"]
    empty_labels, empty_phrases = assign_boxes_to_classes(torch.zeros(0, 11), caption, 0.25)
    assert empty_labels.shape == (0,) and empty_phrases == []
    with pytest.raises(ValueError, match="token_scores"):
        assign_boxes_to_classes(torch.zeros(2, 5), caption, 0.25)
