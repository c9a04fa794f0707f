"""The reproduction command end to end (--dry-run: tiny models, synthetic VOC data, CPU)."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cli_runner import run_cli
from wsss_pl.reproduce import PAPER, Reproduction, ReproductionError


@pytest.mark.slow
def test_dry_run_reproduction_runs_every_stage(tmp_path: Path) -> None:
    out = tmp_path / "repro"
    result = run_cli(["reproduce", "voc", "--dry-run", "--out", str(out)], tmp_path, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for stage in ("label", "score", "fit", "test", "predict"):
        assert (out / "logs" / f"{stage}.log").is_file()
    assert "[reproduce] score" in (out / "logs" / "score.log").read_text()  # its own log
    payload = json.loads((out / "results.json").read_text())
    rows = {row["key"]: row for row in payload["rows"]}
    assert [r["paper"] for r in payload["rows"]] == [t.paper for t in PAPER["voc"]]
    for key in ("pseudo_train", "pseudo_train_aug", "val"):
        assert 0.0 <= rows[key]["ours"] <= 100.0
    assert payload["details"]["val_per_class"]  # per-class IoU from the test stage
    # The evaluation server's layout: one palette PNG per image, at the image's size.
    comp6 = out / "results" / "VOC2012" / "Segmentation" / "comp6_test_cls"
    pngs = sorted(comp6.glob("*.png"))
    val_ids = (out / "data" / "VOC2012" / "ImageSets" / "Segmentation" / "val.txt").read_text()
    assert [p.stem for p in pngs] == sorted(val_ids.split())
    with Image.open(pngs[0]) as png:
        assert png.mode == "P"
        image = Image.open(out / "data" / "VOC2012" / "JPEGImages" / f"{pngs[0].stem}.jpg")
        assert png.size == image.size
        assert np.asarray(png).max() <= 20
    with tarfile.open(out / "results.tar.gz") as tar:
        names = tar.getnames()
    assert f"results/VOC2012/Segmentation/comp6_test_cls/{pngs[0].name}" in names
    table = (out / "results.md").read_text()
    assert "| 88.3 |" in table and "| 77.2 |" in table and "dry run" in table
    assert "| result | paper | ours |" in result.stdout


def test_unknown_stage_and_dataset_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ReproductionError, match="dataset must be one of"):
        Reproduction("cityscapes", tmp_path)
    result = run_cli(["reproduce", "voc", "--stages", "label,tset"], tmp_path, timeout=120)
    assert result.returncode == 2 and "tset" in result.stderr and "Traceback" not in result.stderr


def test_best_checkpoint_is_chosen_by_the_miou_in_its_name(tmp_path: Path) -> None:
    directory = tmp_path / "wandb" / "p" / "run" / "checkpoints"
    directory.mkdir(parents=True)
    for name in ("step000100-miou50.12.ckpt", "step000200-miou61.20.ckpt", "last.ckpt"):
        (directory / name).write_bytes(b"")
    chosen = Reproduction("voc", tmp_path).best_checkpoint()
    assert chosen.name == "step000200-miou61.20.ckpt"
