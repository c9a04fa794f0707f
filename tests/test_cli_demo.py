"""The demo through the real CLI: fit, checkpoint, metrics, W&B offline media, validate/test/predict."""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cli_runner import DEMO_CONFIG, FAST_OVERRIDES, run_cli, write_csv_logger_config
from wsss_pl.classes import VOC

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    workdir = tmp_path_factory.mktemp("demo")
    loggers = write_csv_logger_config(workdir)
    result = run_cli(
        ["fit", "--config", str(DEMO_CONFIG), "--config", str(loggers), *FAST_OVERRIDES], workdir
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    (workdir / "fit_stdout.txt").write_text(result.stdout)
    return workdir


def _metrics(workdir: Path) -> list[dict[str, str]]:
    (path,) = workdir.glob("runs/csv/lightning_logs/version_*/metrics.csv")
    with path.open() as handle:
        return list(csv.DictReader(handle))


def test_fit_writes_checkpoint(demo_run: Path) -> None:
    last = demo_run / "runs/demo/checkpoints/last.ckpt"
    assert last.is_file()
    checkpoint = torch.load(last, map_location="cpu", weights_only=False)
    assert checkpoint["epoch"] == 1
    assert any(key.startswith("net.") for key in checkpoint["state_dict"])
    assert checkpoint["hyper_parameters"]["class_names"] == list(VOC.class_names)
    best = [p for p in (demo_run / "runs/demo/checkpoints").glob("epoch*-miou*.ckpt")]
    assert best, "the val/mIoU-monitored checkpoint is missing"


def test_fit_logs_miou_and_named_per_class_iou(demo_run: Path) -> None:
    rows = _metrics(demo_run)
    val_rows = [r for r in rows if r.get("val/mIoU")]
    assert len(val_rows) == 2  # one per epoch
    for row in val_rows:
        miou = float(row["val/mIoU"])  # percent
        assert 0.0 <= miou <= 100.0
        per_class = [float(row[k]) for k in row if k.startswith("val/IoU/") and row[k]]
        assert per_class, "per-class IoU missing"
        assert math.isclose(miou, sum(per_class) / len(per_class), rel_tol=1e-4)
    assert "val/IoU/background" in rows[0]
    assert any(float(r["train/loss"]) > 0 for r in rows if r.get("train/loss"))


def test_demo_losses_stay_in_a_sane_range(demo_run: Path) -> None:
    """Cross-entropy means per valid pixel: a uniform guess over 21 classes scores ln 21 = 3.04.
    Every logged train/loss and val/loss stays below twice that (measured: at most 3.2; with the
    demo's former lr 0.01 the classifier's x10/x20 learning rates diverged: 30 at step 1)."""
    rows = _metrics(demo_run)
    losses = [float(r[k]) for r in rows for k in ("train/loss", "val/loss") if r.get(k)]
    assert len(losses) >= 4 and all(0 < loss < 2 * math.log(21) for loss in losses), losses


def test_wandb_iou_table_of_each_epoch_averages_to_its_val_miou(demo_run: Path) -> None:
    """One table per validation (none from the sanity check, one for the last epoch), holding
    that epoch's numbers, not the previous validation's."""
    miou_by_epoch = {
        int(r["epoch"]): float(r["val/mIoU"]) for r in _metrics(demo_run) if r.get("val/mIoU")
    }
    (run_dir,) = demo_run.glob("runs/demo/wandb/offline-run-*")
    tables = [
        json.loads(p.read_text())
        for p in (run_dir / "files/media/table/val").glob("iou_table_*.table.json")
    ]
    assert len(tables) == len(miou_by_epoch) == 2
    for table in tables:
        assert table["columns"] == ["class", "IoU", "epoch"]
        (epoch,) = {row[2] for row in table["data"]}
        ious = [row[1] for row in table["data"] if row[1] is not None]
        assert len(table["data"]) == VOC.num_classes
        assert math.isclose(sum(ious) / len(ious), miou_by_epoch[epoch], abs_tol=0.01)


def test_fit_prints_progress_lines_and_a_summary(demo_run: Path) -> None:
    out = (demo_run / "fit_stdout.txt").read_text().splitlines()
    # stdout is a pipe here: plain progress lines, one per epoch and validation.
    assert [line.split(":")[0] for line in out if line.startswith(("epoch ", "validation "))] == [
        "epoch 0 (1 of 2)", "validation after epoch 0 (1 of 2)",
        "epoch 1 (2 of 2)", "validation after epoch 1 (2 of 2)",
    ]  # fmt: skip
    assert any(
        line.startswith("epoch 1 (2 of 2): 4/4 it (100%)") and "it/s" in line for line in out
    )
    head = next(i for i, line in enumerate(out) if line.startswith("wsss_pl fit finished: "))
    summary = "\n".join(out[head:])
    assert "2 epochs, 8 steps" in out[head]
    rows = {int(r["epoch"]): float(r["val/mIoU"]) for r in _metrics(demo_run) if r.get("val/mIoU")}
    best = max(rows, key=rows.__getitem__)
    assert (
        f"val mIoU: last {rows[1]:.2f} (epoch 1), best {rows[best]:.2f} (epoch {best})" in summary
    )
    (best_ckpt,) = (demo_run / "runs/demo/checkpoints").glob("epoch*-miou*.ckpt")
    assert f"checkpoint (best by val/mIoU): {best_ckpt}" in summary
    (run_dir,) = demo_run.glob("runs/demo/wandb/offline-run-*")
    assert f"W&B run (offline): {run_dir.relative_to(demo_run)}" in summary
    assert f"resolved config: {run_dir.relative_to(demo_run)}/files/run_config.yaml" in summary


def test_one_miou_unit_everywhere_a_user_reads(demo_run: Path) -> None:
    """Percent, as the paper: the progress line, the logged metric (CSV, what Lightning's tables
    and W&B show), the checkpoint name and the summary all carry the same number."""
    out = (demo_run / "fit_stdout.txt").read_text()
    logged = {
        int(r["epoch"]): float(r["val/mIoU"]) for r in _metrics(demo_run) if r.get("val/mIoU")
    }
    assert any(value > 1.0 for value in logged.values()), logged  # not a fraction
    shown = re.findall(r"validation after epoch (\d) .*val/mIoU=([\d.]+)", out)
    assert {int(e): float(v) for e, v in shown} == pytest.approx(logged, abs=0.01)
    assert f"val mIoU: last {logged[1]:.2f} (epoch 1)" in out
    (best_ckpt,) = (demo_run / "runs/demo/checkpoints").glob("epoch*-miou*.ckpt")
    epoch, named = re.fullmatch(r"epoch(\d+)-miou([\d.]+)\.ckpt", best_ckpt.name).groups()
    assert float(named) == pytest.approx(logged[int(epoch)], abs=0.006)
    per_class = [float(v) for k, v in _metrics(demo_run)[-1].items() if "/IoU/" in k and v]
    assert per_class and max(per_class) <= 100.0


def test_review_images_on_disk_for_every_logger(demo_run: Path) -> None:
    """Composite review PNGs (titled panels, colour legend) beside the offline W&B run and in the
    CSV logger's folder, named in the summary; validation rows have 4 panels."""
    out = (demo_run / "fit_stdout.txt").read_text()
    (run_dir,) = demo_run.glob("runs/demo/wandb/offline-run-*")
    (csv_dir,) = demo_run.glob("runs/csv/lightning_logs/version_*")
    for folder in (run_dir / "review", csv_dir / "review"):
        val = sorted(folder.glob("val_predictions_step*.png"))
        train = sorted(folder.glob("train_labels_step*.png"))
        assert len(val) == 2 * 4 and len(train) == 2 * 2, sorted(folder.iterdir())  # 2 epochs
        image = np.asarray(Image.open(val[0]).convert("RGB"))
        assert image.shape[1] >= 4 * 200  # image | ground truth | prediction | error
        assert f"review images ({len(list(folder.glob('*.png')))} PNGs" in out
    assert f"): {run_dir.relative_to(demo_run)}/review" in out


def test_wandb_offline_media_has_class_id_masks(demo_run: Path) -> None:
    (run_dir,) = demo_run.glob("runs/demo/wandb/offline-run-*")
    media = run_dir / "files" / "media" / "images"
    overlays = list((media / "val").glob("predictions_*.png"))
    masks = list((media / "mask" / "val").glob("predictions_*.mask.png"))
    train_masks = list((media / "mask" / "train").glob("labels_*.mask.png"))
    assert overlays and masks and train_masks
    # Each val image carries ground truth, prediction and error layers.
    assert len(masks) >= len(overlays)  # W&B stores identical masks once
    values: set[int] = set()
    for path in masks:
        values |= set(np.unique(np.asarray(Image.open(path))).tolist())
    assert values <= set(range(VOC.num_classes)) | {255}
    assert values & set(range(1, VOC.num_classes)), "no foreground class id in any mask"
    assert (run_dir / "files" / "run_config.yaml").is_file()


def test_validate_test_predict_from_checkpoint(demo_run: Path) -> None:
    ckpt = str(demo_run / "runs/demo/checkpoints/last.ckpt")
    common = ["--config", str(DEMO_CONFIG), *FAST_OVERRIDES, "--ckpt_path", ckpt]
    for command, split in (("validate", "val"), ("test", "test")):
        result = run_cli([command, *common], demo_run)
        assert result.returncode == 0, result.stderr[-4000:]
        # The summary: mIoU and the per-class table.
        assert f"wsss_pl {command}: {split} mIoU " in result.stdout
        assert "  background " in result.stdout and "  tvmonitor " in result.stdout
    result = run_cli(["predict", *common, "--model.test_flip", "true"], demo_run)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "wsss_pl predict: wrote 4 palette PNGs to runs/demo/predictions" in result.stdout
    predictions = sorted((demo_run / "runs/demo/predictions").glob("*.png"))
    val_ids = (
        (demo_run / "data/synthetic_voc/VOC2012/ImageSets/Segmentation/val.txt").read_text().split()
    )
    assert [p.stem for p in predictions] == sorted(val_ids)
    with Image.open(predictions[0]) as image:
        assert image.mode == "P" and image.size == (80, 64)
        assert set(np.unique(np.asarray(image)).tolist()) <= set(range(VOC.num_classes))


def test_config_typo_names_the_key(tmp_path: Path) -> None:
    result = run_cli(
        ["fit", "--config", str(DEMO_CONFIG), "--data.batch_sise", "4"], tmp_path, timeout=120
    )
    assert result.returncode == 2
    assert result.stderr.splitlines()[0] == (
        "wsss_pl fit: error: unknown option --data.batch_sise (did you mean --data.batch_size?)"
    )


def test_print_config_resolves(tmp_path: Path) -> None:
    result = run_cli(["fit", "--config", str(DEMO_CONFIG), "--print_config"], tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "wsss_pl.models.deeplab_v2.DeepLabV2" in result.stdout
    assert "SyntheticVOC" in result.stdout


def test_missing_data_root_is_a_clear_error(tmp_path: Path) -> None:
    voc = Path(__file__).resolve().parents[1] / "configs" / "voc.yaml"
    result = run_cli(["fit", "--config", str(voc), "--data.source.init_args.root", str(tmp_path / "nowhere"),
                      "--trainer.logger", "false", "--model.net.init_args.pretrained", "null"], tmp_path, timeout=180)  # fmt: skip
    assert result.returncode == 2, result.stderr[-3000:]
    assert "nowhere" in result.stderr and "Traceback" not in result.stderr
