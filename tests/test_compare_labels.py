"""``compare-labels`` end to end on the real VOC samples with two tiny labellers: Grounding DINO +
SAM (the paper's pipeline, tiny random weights) and SAM 3 (tiny random weights), W&B offline.

Checks the table (markdown + JSON), the per-labeller caches (the paper labeller's is the very
directory ``label`` would fill), the resume (a second run labels nothing and gives the same
numbers), the W&B run's tables and panel, and the shipped configs/compare_voc.yaml."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from wsss_pl.cli import main as cli_main
from wsss_pl.compare_labels import _iou, build_labellers, build_parser, disagreements

IDS = ["2007_000032", "2011_003066"]  # the samples in the train split with images
ROOT = Path(__file__).resolve().parents[1]


def write_config(tmp_path: Path, sample_data: Path) -> Path:
    config = {
        "source": {
            "class_path": "wsss_pl.data.voc.VOC",
            "init_args": {
                "root": str(sample_data / "voc_sample"),
                "train_split": "train",
                "labels_file": "image_labels.json",
            },
        },
        "ids": IDS,
        "output_dir": str(tmp_path / "out"),
        "batch_size": 2,
        "device": "cpu",
        "wandb": {"project": "compare-test", "mode": "offline"},
        "labellers": {
            "gdino_sam": {"detector": "tiny", "sam_checkpoint": "tiny", "box_threshold": 0.2},
            "sam3": {
                "detector": {
                    "class_path": "wsss_pl.labeling.detectors.Sam3Spec",
                    "init_args": {"model": "tiny"},
                },
                "box_threshold": 0.25,
            },
        },
    }
    path = tmp_path / "compare.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.sample_data
def test_compare_labels_end_to_end_and_resume(tmp_path: Path, sample_data: Path, capsys) -> None:
    config = write_config(tmp_path, sample_data)
    assert cli_main(["compare-labels", "--config", str(config)]) == 0
    out = tmp_path / "out"
    record = json.loads((out / "compare.json").read_text())
    markdown = (out / "compare.md").read_text()
    assert record["ids"] == IDS
    names = [row["labeller"] for row in record["labellers"]]
    assert names == ["gdino_sam", "sam3"]
    for row in record["labellers"]:
        assert row["labelled_now"] == 2 and row["images_with_gt"] == 2
        assert 0.0 <= row["mIoU"] <= 1.0 and row["images_per_second"] > 0
        assert row["peak_memory_mib"] > 0 and row["boxes_per_image"] >= 0
        assert row["per_class_iou"]["background"] is not None
        assert f"| {row['labeller']} | {row['mIoU'] * 100:.1f} |" in markdown
    sam3 = record["labellers"][1]
    assert sam3["boxes_per_image"] > 0 and sam3["unmatched_per_image"] == 0
    assert [d["id"] for d in record["disagreements"]] and set(
        d["id"] for d in record["disagreements"]
    ) <= set(IDS)
    assert "Images where the labellers disagree most" in markdown
    assert markdown in capsys.readouterr().out
    # One cache per labeller fingerprint, with every id.
    caches = sorted((out / "cache" / "voc").iterdir())
    assert len(caches) == 2 and all(len(list(c.glob("*.png"))) == 2 for c in caches)
    # W&B (offline): a run directory with the tables and the side-by-side panel.
    wandb_dir = Path(record["wandb_dir"])
    assert wandb_dir.is_dir() and list(wandb_dir.rglob("*.wandb"))
    media = [p.name for p in wandb_dir.rglob("*.table.json")]
    assert any("summary" in m for m in media) and any("panel" in m for m in media)
    panel = json.loads(next(wandb_dir.rglob("*panel*.table.json")).read_text())
    assert panel["columns"] == ["id", "image", "ground truth", "gdino_sam", "sam3"]

    # Resume: nothing is labelled again and the numbers are the same.
    assert cli_main(["compare-labels", "--config", str(config), "--wandb", "null"]) == 0
    again = json.loads((out / "compare.json").read_text())
    for before, after in zip(record["labellers"], again["labellers"], strict=True):
        assert after["labelled_now"] == 0
        assert after["mIoU"] == before["mIoU"] and after["fingerprint"] == before["fingerprint"]
        assert after["images_per_second"] == before["images_per_second"]  # from the first run


def test_iou_counts_ignore_as_a_miss() -> None:
    matrix = np.array([[8, 0], [2, 4]])  # target rows, predicted columns
    ignored = np.array([0, 2])  # two class-1 pixels left as ignore
    iou = _iou(matrix, ignored)
    assert math.isclose(iou[0], 8 / 10) and math.isclose(iou[1], 4 / 8)
    # Perturbed: without counting the ignored pixels class 1 would score 4 / 6.
    assert not math.isclose(_iou(matrix, np.zeros(2, int))[1], iou[1])


def test_disagreement_ranks_the_most_disputed_image_first() -> None:
    import torch

    class Cache:
        def __init__(self, maps):
            self.maps = maps

        def load(self, sample_id):
            return self.maps[sample_id]

    class Labels:
        def __init__(self, maps):
            self.cache = Cache(maps)

    a = {"x": torch.zeros(4, 4, dtype=torch.uint8), "y": torch.zeros(4, 4, dtype=torch.uint8)}
    b = {"x": torch.zeros(4, 4, dtype=torch.uint8), "y": torch.ones(4, 4, dtype=torch.uint8)}
    b["x"][0, 0] = 1
    b["y"][0] = 255  # ignore: not counted
    rows = disagreements({"a": Labels(a), "b": Labels(b)}, ["x", "y"], top=2)
    assert [r["id"] for r in rows] == ["y", "x"]
    assert rows[0]["disagreement"] == 1.0 and rows[1]["disagreement"] == 1 / 16


def test_shipped_compare_config_parses() -> None:
    parser = build_parser()
    options = parser.parse_args(["--config", str(ROOT / "configs/compare_voc.yaml")])
    assert options.data == "configs/voc.yaml" and options.wandb["mode"] == "offline"
    labellers = build_labellers(options)
    assert list(labellers) == ["paper", "sam3", "owlv2"]
    paper = labellers["paper"]
    assert paper.detector_name == "grounding-dino-tiny" and paper.preset == "paper"
    assert type(labellers["sam3"].detector_spec).__name__ == "Sam3Spec"
    assert labellers["sam3"].detector_spec.provides_masks
    assert type(labellers["owlv2"].detector_spec).__name__ == "OwlV2Spec"


def test_abbreviated_option_is_refused(capsys) -> None:
    """`--confi` must not be taken as `--config` (argparse prefix matching)."""
    code = cli_main(["compare-labels", "--confi", str(ROOT / "configs/compare_voc.yaml")])
    err = capsys.readouterr().err
    assert code == 2 and "unrecognized arguments: --confi" in err and "Traceback" not in err
