"""Diagnosis of label disagreement: recall, precision, confusions, worst images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wsss_pl.classes import VOC
from wsss_pl.diagnosis import (
    ImageErrors,
    diagnose_label_dirs,
    diagnosis_to_json,
    format_diagnosis,
    log_wandb,
)
from wsss_pl.evaluation import main as evaluate_main

NAMES = ["background", "a", "b"]


def _pair() -> tuple[np.ndarray, np.ndarray]:
    gt = np.zeros((10, 10), dtype=np.uint8)
    gt[:5] = 1  # 50 px of class a
    gt[9, 9] = 255  # left out
    pred = gt.copy()
    pred[3:5] = 0  # 20 px of a -> background
    pred[5, :5] = 2  # 5 px of background -> b
    pred[6, :5] = 255  # 5 px of background abstained
    pred[9, 9] = 1  # on a gt-ignore pixel: not counted
    return pred, gt


def test_hand_made_masks() -> None:
    pred, gt = _pair()
    errors = ImageErrors(3, top_n=2)
    errors.update(["x"], [pred], [gt])
    small_pred, small_gt = pred.copy(), gt.copy()
    small_pred[3:5] = 1
    small_pred[4, 0] = 0  # only 1 px of a missed
    errors.update(["y"], [small_pred], [small_gt])
    d = errors.diagnosis(NAMES)
    assert d.num_images == 2
    # class a: 100 gt px, 30 + 49 hit; never predicted elsewhere
    assert d.recall[1] == pytest.approx(79 / 100) and d.precision[1] == pytest.approx(1.0)
    # background: 2 * 49 gt px (one 255), 10 lost per image (5 -> b, 5 -> ignore)
    assert d.recall[0] == pytest.approx(78 / 98)
    assert d.precision[0] == pytest.approx(78 / (78 + 21))
    assert np.isnan(d.recall[2]) and d.precision[2] == 0.0
    top = d.confusions(3)
    assert top[0] == {"class": "a", "labelled_as": "background", "pixels": 21, "share": 0.21}
    assert {(t["class"], t["labelled_as"], t["pixels"]) for t in top[1:]} == {
        ("background", "b", 10),
        ("background", "ignore", 10),
    }
    # worst image of class a is x (20 missed), then y (1 missed)
    assert d.top_images["a"] == [("x", 20, 20, 0), ("y", 1, 1, 0)]
    assert d.top_images["b"] == [("y", 5, 0, 5), ("x", 5, 0, 5)]  # ties: larger id first
    text = format_diagnosis(d)
    assert "a          -> background         21 px   21.0% of a" in text
    report = diagnosis_to_json(d)
    assert report["classes"]["a"]["top_images"][0] == {
        "id": "x", "error_pixels": 20, "missed": 20, "false": 0
    }  # fmt: skip
    assert report["classes"]["b"]["recall"] is None


def test_label_dirs_and_wandb_table(tmp_path: Path) -> None:
    import wandb

    pred, gt = _pair()
    for name, array in (("pred", pred), ("gt", gt)):
        (tmp_path / name).mkdir()
        Image.fromarray(array, mode="L").save(tmp_path / name / "x.png")
    d = diagnose_label_dirs(tmp_path / "pred", tmp_path / "gt", NAMES)
    assert d.confusions(1)[0]["pixels"] == 20
    assert log_wandb(d) is False  # no active run: nothing logged
    run = wandb.init(project="wsss_pl-test", dir=str(tmp_path), mode="offline")
    try:
        assert log_wandb(d) is True
    finally:
        run.finish()
    tables = list(tmp_path.glob("wandb/offline-run-*/files/media/table/diagnosis/*.table.json"))
    assert len(tables) == 2
    classes = next(json.loads(p.read_text()) for p in tables if "classes" in p.name)
    assert classes["columns"][:3] == ["class", "recall", "precision"]
    assert [row[0] for row in classes["data"]] == NAMES


@pytest.mark.sample_data
def test_evaluate_labels_diagnose_on_real_voc(
    sample_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    crops = sample_data / "voc_val_crops"
    argv = ["--pred", str(crops / "deeplabv3plus_pred"), "--gt", str(crops / "SegmentationClass"),
            "--workers", "1", "--diagnose"]  # fmt: skip
    assert evaluate_main([*argv, "--format", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    diagnosis = report["diagnosis"]
    assert diagnosis["num_images"] == report["num_images"] == 14
    # Independent recount with numpy over the real files.
    tp = np.zeros(21)
    gt_px = np.zeros(21)
    pred_px = np.zeros(21)
    worst: dict[int, list[tuple[int, str]]] = {}
    for path in sorted((crops / "SegmentationClass").glob("*.png")):
        gt = np.asarray(Image.open(path))
        pred = np.asarray(Image.open(crops / "deeplabv3plus_pred" / path.name))
        valid = gt != 255
        for c in range(21):
            g, p = (gt == c) & valid, (pred == c) & valid
            tp[c] += (g & p).sum()
            gt_px[c] += g.sum()
            pred_px[c] += p.sum()
            error = int((g & ~p).sum() + (p & ~g).sum())
            if error:
                worst.setdefault(c, []).append((error, path.stem))
    for c, name in enumerate(["background", *VOC.class_names]):
        entry = diagnosis["classes"][name]
        if gt_px[c]:
            assert entry["recall"] == pytest.approx(tp[c] / gt_px[c], abs=1e-6)
        if pred_px[c]:
            assert entry["precision"] == pytest.approx(tp[c] / pred_px[c], abs=1e-6)
        if c in worst:
            assert entry["top_images"][0]["error_pixels"] == max(worst[c])[0]
    # the evaluation's own confusion matrix agrees on the diagonal
    assert np.diag(np.array(report["confusion"]))[: len(tp)].tolist() == tp.astype(int).tolist()
    assert evaluate_main(argv) == 0
    text = capsys.readouterr().out
    assert "top confusions" in text and "recall" in text
