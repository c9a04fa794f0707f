"""evaluate_label_dirs against an independent per-class computation, on real VOC masks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wsss_pl.classes import VOC_CLASSES, voc_palette
from wsss_pl.errors import DataError
from wsss_pl.evaluation import evaluate_label_dirs, format_table, main, to_json

NUM_CLASSES = 21


def _write(path: Path, array: np.ndarray, mode: str = "P") -> None:
    image = Image.fromarray(array.astype(np.uint8), mode="L")
    if mode == "P":
        image = image.convert("P")  # keeps index values; give it the VOC colours
        image.putpalette(voc_palette())
    image.save(path)


def _read(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image)


def _perturb(gt: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A plausible imperfect prediction: shifted, some classes swapped, an abstained patch."""
    pred = np.roll(gt, (int(rng.integers(-6, 7)), int(rng.integers(-6, 7))), axis=(0, 1)).copy()
    pred[pred == 255] = 0  # predictions have no boundary band
    if rng.random() < 0.3:
        fg = (pred > 0) & (pred < 255)
        pred[fg] = pred[fg] % 20 + 1
    if rng.random() < 0.3:
        y, x = int(rng.integers(0, gt.shape[0] - 20)), int(rng.integers(0, gt.shape[1] - 20))
        pred[y : y + 20, x : x + 20] = 255
    return pred


def _independent_iou(pairs: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Per-class intersection / union with boolean ops; 255 predictions count as misses."""
    inter = np.zeros(NUM_CLASSES)
    union = np.zeros(NUM_CLASSES)
    for gt, pred in pairs:
        valid = gt != 255
        for c in range(NUM_CLASSES):
            g, p = (gt == c) & valid, (pred == c) & valid
            inter[c] += np.logical_and(g, p).sum()
            union[c] += np.logical_or(g, p).sum()
    with np.errstate(invalid="ignore"):
        return np.where(union > 0, inter / np.maximum(union, 1), np.nan)


@pytest.fixture(scope="module")
def real_dirs(sample_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """300 real SegmentationClassAug masks as gt; perturbed predictions; 7 predictions missing."""
    source = sample_data / "voc_sample" / "SegmentationClassAug"
    ids = sorted(p.stem for p in source.glob("*.png"))[::40][:300]
    root = tmp_path_factory.mktemp("eval")
    gt_dir, pred_dir = root / "gt", root / "pred"
    gt_dir.mkdir()
    pred_dir.mkdir()
    rng = np.random.default_rng(0)
    missing = ids[5::43]
    pairs = {}
    for k, sample_id in enumerate(ids):
        gt = _read(source / f"{sample_id}.png")
        (gt_dir / f"{sample_id}.png").write_bytes((source / f"{sample_id}.png").read_bytes())
        pred = _perturb(gt, rng)
        pairs[sample_id] = (gt, pred)
        if sample_id not in missing:
            _write(pred_dir / f"{sample_id}.png", pred, mode="L" if k % 2 else "P")
    _write(pred_dir / "not_in_gt.png", np.zeros((4, 4)))
    return {"gt": gt_dir, "pred": pred_dir, "ids": ids, "missing": missing, "pairs": pairs}


@pytest.mark.sample_data
def test_matches_independent_computation(real_dirs: dict) -> None:
    present = [real_dirs["pairs"][i] for i in real_dirs["ids"] if i not in real_dirs["missing"]]
    expected = _independent_iou(present)
    serial = evaluate_label_dirs(real_dirs["pred"], real_dirs["gt"], NUM_CLASSES)
    parallel = evaluate_label_dirs(real_dirs["pred"], real_dirs["gt"], NUM_CLASSES, workers=2)
    assert np.array_equal(serial.confusion, parallel.confusion)
    assert serial.confusion.dtype == np.int64 and serial.confusion.shape == (21, 21)
    np.testing.assert_allclose(serial.iou, expected, rtol=0, atol=1e-12)
    assert serial.miou == pytest.approx(float(np.nanmean(expected)), abs=1e-12)
    assert 0.3 < serial.miou < 0.95  # a real, imperfect result
    assert serial.num_images == len(present)
    assert serial.missing_predictions == sorted(real_dirs["missing"])
    assert serial.extra_predictions == ["not_in_gt"]
    # Every valid gt pixel is counted exactly once: in the matrix or as a 255 miss.
    valid = sum(int((gt != 255).sum()) for gt, _ in present)
    assert int(serial.confusion.sum() + serial.pred_ignored.sum()) == valid
    assert serial.pred_ignored.sum() > 0


@pytest.mark.sample_data
def test_missing_as_background_and_ids(real_dirs: dict) -> None:
    pairs = [
        (gt, np.zeros_like(gt) if i in real_dirs["missing"] else pred)
        for i, (gt, pred) in real_dirs["pairs"].items()
    ]
    result = evaluate_label_dirs(
        real_dirs["pred"], real_dirs["gt"], NUM_CLASSES, missing_as_background=True
    )
    np.testing.assert_allclose(result.iou, _independent_iou(pairs), atol=1e-12)
    assert result.num_images == len(real_dirs["ids"])
    assert result.missing_predictions == sorted(real_dirs["missing"])

    subset = real_dirs["ids"][:10]
    only = evaluate_label_dirs(real_dirs["pred"], real_dirs["gt"], NUM_CLASSES, ids=subset)
    kept = [real_dirs["pairs"][i] for i in subset if i not in real_dirs["missing"]]
    np.testing.assert_allclose(only.iou, _independent_iou(kept), atol=1e-12)
    with pytest.raises(DataError, match="no ground truth"):
        evaluate_label_dirs(real_dirs["pred"], real_dirs["gt"], NUM_CLASSES, ids=["nope"])


@pytest.mark.sample_data
def test_self_evaluation_is_perfect(real_dirs: dict) -> None:
    result = evaluate_label_dirs(real_dirs["gt"], real_dirs["gt"], NUM_CLASSES)
    present = ~np.isnan(result.iou)
    assert present[0] and present.sum() > 15 and np.all(result.iou[present] == 1.0)
    assert result.miou == 1.0 and result.pred_ignored.sum() == 0


@pytest.mark.sample_data
def test_cli_json(real_dirs: dict, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--pred", str(real_dirs["pred"]), "--gt", str(real_dirs["gt"]), "--format", "json"]
    assert main([*argv, "--classes", "voc", "--workers", "2"]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    expected = evaluate_label_dirs(real_dirs["pred"], real_dirs["gt"], NUM_CLASSES)
    assert report["unit"] == "percent" and report["miou"] == pytest.approx(100 * expected.miou)
    assert report["num_classes"] == 21 and report["class_names"][1] == "aeroplane"
    assert report["iou"]["aeroplane"] == pytest.approx(100 * expected.iou[1])
    assert report["missing_predictions"] == sorted(real_dirs["missing"])
    assert "have no prediction" in captured.err
    assert main([*argv, "--missing_as_background"]) == 0
    assert json.loads(capsys.readouterr().out)["num_images"] == len(real_dirs["ids"])


def _small_dirs(root: Path) -> tuple[Path, Path]:
    gt_dir, pred_dir = root / "gt", root / "pred"
    gt_dir.mkdir()
    pred_dir.mkdir()
    gt = np.array([[0, 0, 1, 1], [0, 255, 2, 2]])
    pred = np.array([[0, 1, 1, 1], [0, 0, 2, 255]])
    _write(gt_dir / "a.png", gt)
    _write(pred_dir / "a.png", pred)
    return gt_dir, pred_dir


def test_hand_computed_small_case(tmp_path: Path) -> None:
    gt_dir, pred_dir = _small_dirs(tmp_path)
    result = evaluate_label_dirs(pred_dir, gt_dir, 3)
    # bg: gt {00,01,10}, pred {00,10} (11 is ignored gt) -> 2/3; class 1: gt {02,03}, pred
    # {01,02,03} -> 2/3; class 2: gt {12,13}, pred {12} (13 abstained) -> 1/2.
    np.testing.assert_allclose(result.iou, [2 / 3, 2 / 3, 1 / 2])
    assert result.confusion.tolist() == [[2, 1, 0], [0, 2, 0], [0, 0, 1]]
    assert result.pred_ignored.tolist() == [0, 0, 1]
    table = format_table(result, ["background", "cat", "dog"])
    assert "dog" in table and "50.00" in table and "mIoU" in table and "61.11" in table
    assert to_json(result, ["cat", "dog"])["iou"]["background"] == pytest.approx(200 / 3)
    # A class absent from both sides is NaN / null and stays out of the mean.
    wide = evaluate_label_dirs(pred_dir, gt_dir, 4)
    assert np.isnan(wide.iou[3]) and wide.miou == pytest.approx(result.miou)
    assert to_json(wide, ["a", "b", "c"])["iou"]["c"] is None


def test_bad_values_name_the_file(tmp_path: Path) -> None:
    gt_dir, pred_dir = _small_dirs(tmp_path)
    _write(pred_dir / "a.png", np.array([[0, 30, 1, 1], [0, 0, 2, 2]]))
    with pytest.raises(DataError, match=r"prediction file .*a\.png has values \[30\]"):
        evaluate_label_dirs(pred_dir, gt_dir, 3)
    (tmp_path / "again").mkdir()
    _small_dirs(tmp_path / "again")
    _write(tmp_path / "again" / "pred" / "a.png", np.zeros((2, 4)))  # valid, so the gt is at fault
    with pytest.raises(DataError, match=r"ground-truth file .*a\.png has values \[2\]"):
        evaluate_label_dirs(tmp_path / "again" / "pred", tmp_path / "again" / "gt", 2)
    _write(pred_dir / "a.png", np.zeros((3, 3)))
    with pytest.raises(DataError, match="3x3"):
        evaluate_label_dirs(pred_dir, gt_dir, 3)
    Image.new("RGB", (4, 2)).save(pred_dir / "a.png")
    with pytest.raises(DataError, match="mode 'RGB'"):
        evaluate_label_dirs(pred_dir, gt_dir, 3)


def test_cli_bad_input_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gt_dir, pred_dir = _small_dirs(tmp_path)
    assert main(["--pred", str(tmp_path / "nowhere"), "--gt", str(gt_dir)]) == 2
    assert "does not exist" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["--pred", str(empty), "--gt", str(gt_dir)]) == 2
    assert "no ids in common" in capsys.readouterr().err
    argv = ["--pred", str(pred_dir), "--gt", str(gt_dir)]
    assert main([*argv, "--classes", "voc", "--num_classes", "5"]) == 2
    assert "--num_classes 5 disagrees" in capsys.readouterr().err
    assert main([*argv, "--num_classes", "5"]) == 0  # names default to class_<i>
    assert "class_4" in capsys.readouterr().out
    names = tmp_path / "names.txt"
    names.write_text("cat\ndog\n")
    assert main(["--pred", str(pred_dir), "--gt", str(gt_dir), "--classes", str(names)]) == 0
    out = capsys.readouterr().out
    assert "cat" in out and "61.11" in out
    assert main(["--pred", str(pred_dir)]) == 2  # argparse: --gt missing
    assert len(VOC_CLASSES) + 1 == NUM_CLASSES
