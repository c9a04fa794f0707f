"""Exclusion phrases: detected, not painted, and erased from their class."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from wsss_pl.classes import VOC
from wsss_pl.data.collate import collate_samples
from wsss_pl.data.voc import VOC as VOCSource
from wsss_pl.errors import ConfigError, UnknownClassError
from wsss_pl.labeling.detectors.grounding import Detections
from wsss_pl.labeling.detectors.prompt import build_captions
from wsss_pl.labeling.detectors.tokenizer import bert_tokenizer
from wsss_pl.labeling.exclusion import with_exclusion_phrases
from wsss_pl.labeling.labeler import PseudoLabeler
from wsss_pl.labeling.online import OnlinePseudoLabels
from wsss_pl.labeling.storage.cache import decode_rle

TABLE, PERSON = VOC.label_id("diningtable"), VOC.label_id("person")


def _labeler(fill: str) -> PseudoLabeler:
    # A dataset whose table excludes what is on it: plate moves from assist to exclusion words.
    base = dataclasses.replace(VOC, assist_words={})
    vocabulary = with_exclusion_phrases(base, {"diningtable": ["plate"]})
    return PseudoLabeler(nn.Identity(), nn.Identity(), vocabulary,  # type: ignore[arg-type]
                         exclusion_words={"diningtable": ["plate"]}, exclusion_fill=fill)  # fmt: skip


@pytest.mark.parametrize(("fill", "value"), [("background", 0), ("ignore", 255)])
def test_hand_made_masks(fill: str, value: int) -> None:
    masks = torch.zeros(3, 20, 20, dtype=torch.bool)
    masks[0, 5:15, 0:20] = True  # the table
    masks[1, 0:12, 0:6] = True  # a person, partly over the table
    masks[2, 8:12, 2:10] = True  # a plate on the table, partly over the person
    found = Detections(
        boxes=torch.tensor([[0.0, 5, 20, 15], [0, 0, 6, 12], [2, 8, 10, 12]]),
        scores=torch.tensor([0.9, 0.8, 0.7]),
        labels=torch.tensor([TABLE, PERSON, TABLE]),
        phrases=["diningtable", "person", "plate"],
    )
    image = torch.zeros(3, 20, 20, dtype=torch.uint8)
    result = _labeler(fill)._merge(image, ["diningtable", "person"], found, masks)
    label = result.label
    assert bool((label[8:12, 6:10] == value).all())  # plate pixels that were table
    assert bool((label[8:12, 2:6] == PERSON).all())  # plate over the person: person stays
    assert bool((label[5:8, 6:20] == TABLE).all()) and bool((label[12:15, 10:20] == TABLE).all())
    assert [i["phrase"] for i in result.metadata["instances"]] == ["diningtable", "person"]
    (record,) = result.metadata["excluded_instances"]
    assert record["phrase"] == "plate" and record["label"] == TABLE
    assert torch.equal(decode_rle(record["rle"]), masks[2])


def test_vocabulary_and_errors() -> None:
    vocabulary = with_exclusion_phrases(VOC, {"diningtable": ["tablecloth"]})
    assert vocabulary.assist_words["diningtable"][-1] == "tablecloth"
    assert "plate" in vocabulary.assist_words["diningtable"]  # the paper's assist words stay
    with pytest.raises(ConfigError, match="plate"):  # assist and exclusion at once
        with_exclusion_phrases(VOC, {"diningtable": ["plate"]})
    with pytest.raises(UnknownClassError, match="table"):
        with_exclusion_phrases(VOC, {"table": ["plate"]})


@pytest.mark.sample_data
def test_real_voc_image_with_tiny_models(sample_data: Path, tmp_path: Path) -> None:
    """2011_003066 (bottle, chair, diningtable, person): exclusion phrases reach the caption, and
    no pixel under an excluded mask keeps its class; without exclusions the fingerprint is as
    before."""
    root = sample_data / "voc_sample"
    source = VOCSource(str(root), train_split="train", labels_file="image_labels.json")
    words = {"diningtable": ["tablecloth"], "person": ["hat", "bag", "shirt"]}

    def labels(**kwargs: object) -> OnlinePseudoLabels:
        source_labels = OnlinePseudoLabels(
            cache_root=str(tmp_path / "cache"), detector="tiny", sam_checkpoint="tiny",
            box_threshold=0.05, text_threshold=0.0, **kwargs,  # type: ignore[arg-type]
        )  # fmt: skip
        source_labels.setup(source)
        return source_labels

    plain, same = labels(), labels(exclusion_words=None)
    excluding = labels(exclusion_words=words, exclusion_fill="ignore")
    assert plain.cache is not None and same.cache is not None and excluding.cache is not None
    assert plain.cache.directory == same.cache.directory != excluding.cache.directory
    manifest = json.loads((excluding.cache.directory / "manifest.json").read_text())
    assert manifest["settings"]["exclusion_words"] == words
    dataset = source.dataset("train")
    index = dataset.ids.index("2011_003066")
    assert excluding.vocabulary is not None
    (caption,) = build_captions(excluding.vocabulary, dataset.image_labels("2011_003066"),
                                bert_tokenizer())  # fmt: skip
    for word in ("tablecloth", "hat", "bag", "shirt"):
        assert f"{word} ." in caption.text
    batch = collate_samples([dataset[index]])
    excluding.label_batch(batch)
    excluding.flush()  # cache writes run in the background until flushed
    metadata = excluding.cache.load_metadata("2011_003066")
    label = excluding.cache.load("2011_003066")
    assert metadata is not None and label is not None
    records = metadata["excluded_instances"]
    assert records, "the tiny detector fired on no exclusion phrase"
    for record in records:
        assert record["phrase"] in words[VOC.class_names[record["label"] - 1]]
        inside = decode_rle(record["rle"])
        assert not bool((label[inside] == record["label"]).any())
