"""What ``label`` needs and accepts, through the real CLI: only the split it labels (COCO without
its val split), and box-file boxes past the image edge clipped and counted (not refused)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from cli_runner import DEMO_CONFIG, REPO, run_cli, run_cli_in_process
from wsss_pl.data.synthetic import make_synthetic_voc
from wsss_pl.data.synthetic_coco import make_synthetic_coco
from wsss_pl.errors import DataError
from wsss_pl.labeling.box_prompts import ImageBoxes, clip_to_image
from wsss_pl.reproduce import dry_run_overrides


# --- clipping ------------------------------------------------------------------------------------
def test_boxes_past_the_edge_are_clipped_and_counted() -> None:
    boxes = ImageBoxes.from_rows(
        [([-3.0, 2.0, 20.0, 10.0], 1, False),  # past the left edge
         ([5.0, 5.0, 70.5, 60.0], 2, True),  # past the right and bottom edges (crowd)
         ([1.0, 1.0, 63.0, 47.0], 3, False)]  # inside
    )  # fmt: skip
    clipped, count = clip_to_image(boxes, 48, 64, "boxes.json")
    assert count == 2
    assert clipped.boxes.tolist() == [[0, 2, 20, 10], [5, 5, 64, 48], [1, 1, 63, 47]]
    assert torch.equal(clipped.labels, boxes.labels) and torch.equal(clipped.crowd, boxes.crowd)
    assert clip_to_image(ImageBoxes.empty(), 48, 64, "x")[1] == 0


@pytest.mark.parametrize(
    "box", [[64.0, 5.0, 80.0, 20.0], [5.0, -20.0, 20.0, 0.0], [-9.0, 50.0, -1.0, 60.0]]
)
def test_a_box_that_misses_the_image_is_still_an_error(box: list[float]) -> None:
    boxes = ImageBoxes.from_rows([([1.0, 1.0, 9.0, 9.0], 1, False), (box, 1, False)])
    with pytest.raises(DataError, match=r"boxes\.json: box .* does not overlap the 64x48 image"):
        clip_to_image(boxes, 48, 64, "boxes.json")


def _label_boxes(tmp_path: Path, data: Path, boxes: dict, name: str) -> tuple[dict, dict]:
    """``label`` (real CLI, in process) with a JSON box file: (PNG bytes by name, rank report)."""
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(boxes))
    labels = {
        "class_path": "wsss_pl.labeling.box_prompts.BoxPromptLabels",
        "init_args": {"cache_root": str(tmp_path / name), "sam_checkpoint": "tiny",
                      "box_file": str(path)},
    }  # fmt: skip
    config = tmp_path / f"{name}.yaml"
    config.write_text(yaml.safe_dump({"data": {"train_labels": labels}}))
    result = run_cli_in_process(
        ["label", "--config", str(DEMO_CONFIG), "--config", str(config),
         "--data.source.init_args.root", str(data), "--data.source.init_args.num_train", "4",
         "--data.source.init_args.num_val", "1", "--data.source.init_args.image_size", "[48, 64]",
         "--data.batch_size", "2", "--data.num_workers", "0", "--trainer.logger", "false",
         "--trainer.accelerator", "cpu"],
        tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    (report,) = (tmp_path / name).rglob("label_pass/rank0.json")
    pngs = {p.name: p.read_bytes() for p in sorted(report.parent.parent.glob("*.png"))}
    return pngs, {**json.loads(report.read_text()), "stdout": result.stdout}


def test_label_clips_box_file_boxes_past_the_edge(tmp_path: Path) -> None:
    data = make_synthetic_voc(tmp_path / "voc", num_train=4, num_val=1, image_size=(48, 64))
    ids = (data / "VOC2012" / "ImageSets" / "Segmentation" / "train.txt").read_text().split()
    past = {ids[0]: [{"box": [-6, 4, 30, 52], "class": "dog"}],
            ids[1]: [{"box": [40, 10, 90.5, 30], "class": "cat"},
                     {"box": [2, 3, 20, 20], "class": "dog"}]}  # fmt: skip
    inside = {ids[0]: [{"box": [0, 4, 30, 48], "class": "dog"}],
              ids[1]: [{"box": [40, 10, 64, 30], "class": "cat"},
                       {"box": [2, 3, 20, 20], "class": "dog"}]}  # fmt: skip
    clipped_pngs, clipped = _label_boxes(tmp_path, data, past, "past")
    inside_pngs, already = _label_boxes(tmp_path, data, inside, "inside")
    assert clipped["clipped_boxes"] == 2 and already["clipped_boxes"] == 0
    assert "boxes past the image edge, clipped to it (rank 0): 2" in clipped["stdout"]
    assert len(clipped_pngs) == 4 and clipped_pngs == inside_pngs  # the same labels


# --- label checks only the split it labels --------------------------------------------------------
def test_label_with_the_coco_config_needs_no_val_split(tmp_path: Path) -> None:
    """configs/coco.yaml's ``label`` on a COCO-format set without val2014/ nor its annotations."""
    out = tmp_path / "run"
    make_synthetic_coco(out / "data", num_train=4, num_val=1, image_size=(48, 64))
    shutil.rmtree(out / "data" / "val2014")
    (out / "data" / "annotations" / "instances_val2014.json").unlink()
    overlay = dry_run_overrides(out, "coco")
    overlay["trainer"] = {"accelerator": "cpu", "logger": False, "callbacks": []}
    overlay["data"]["train_labels"]["init_args"]["cache_root"] = str(out / "cache")
    config = tmp_path / "overlay.yaml"
    config.write_text(yaml.safe_dump(overlay))
    args = ["label", "--config", str(REPO / "configs/coco.yaml"), "--config", str(config)]
    result = run_cli(args, tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "labelled 4 images" in result.stdout
    assert len(list((out / "cache").rglob("*.png"))) == 4
    # The check can fail: without the training split's annotations it is a one-line error.
    (out / "data" / "annotations" / "instances_train2014.json").unlink()
    result = run_cli_in_process(args, tmp_path)
    assert result.returncode == 2 and "instances_train2014.json" in result.stderr
    assert "Traceback" not in result.stderr


def test_fit_still_requires_the_val_split(tmp_path: Path) -> None:
    from wsss_pl.data.coco import COCO

    root = make_synthetic_coco(tmp_path / "coco", num_train=2, num_val=1, image_size=(32, 32))
    (root / "annotations" / "instances_val2014.json").unlink()
    source = COCO(str(root))
    source.prepare_data(stages=("train",))  # label: fine
    with pytest.raises(DataError, match="instances_val2014.json"):
        source.prepare_data()  # fit and the rest: every configured split


def test_voc_label_checks_only_the_train_split(tmp_path: Path) -> None:
    from wsss_pl.data.voc import VOC as VOCSource

    root = make_synthetic_voc(tmp_path / "voc", num_train=2, num_val=1, image_size=(32, 32))
    (root / "VOC2012" / "ImageSets" / "Segmentation" / "val.txt").unlink()
    source = VOCSource(str(root), train_split="train", val_split="val", test_split=None)
    source.prepare_data(stages=("train",))
    with pytest.raises(DataError, match="val"):
        source.prepare_data()


def test_folder_label_needs_no_val_labels_file(tmp_path: Path) -> None:
    from wsss_pl.data.folder import ImageFolder

    (tmp_path / "labels.json").write_text("{}")
    source = ImageFolder(str(tmp_path), ["dog"], val_labels="val_labels.json")
    source.prepare_data(stages=("train",))
    with pytest.raises(DataError, match="val_labels.json"):
        source.prepare_data(stages=["train", "val"])
