"""The reproduction command end to end (--dry_run: tiny models, synthetic VOC data, CPU)."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from cli_runner import run_cli
from wsss_pl.reproduce import PAPER, Reproduction, ReproductionError


@pytest.mark.slow
def test_dry_run_reproduction_runs_every_stage(tmp_path: Path) -> None:
    out = tmp_path / "repro"
    result = run_cli(
        ["reproduce", "voc", "--dry_run", "--output_dir", str(out)], tmp_path, timeout=900
    )
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
    # No leftovers: the partial results are in results.json now; W&B runs in out/wandb, the
    # test stage's beside them (out/test/wandb), none in out/wandb/wandb.
    assert not (out / "results.partial.json").exists()
    assert list((out / "wandb").glob("offline-run-*")) and not (out / "wandb" / "wandb").exists()
    assert list((out / "test" / "wandb").glob("offline-run-*"))
    _check_final_step_headline(out, payload, max_steps=6)


def _check_final_step_headline(out: Path, payload: dict, max_steps: int) -> None:
    """The headline val row is the final step's weights; the best-on-val one only beside it."""
    details = payload["details"]
    assert details["val_step"] == max_steps
    assert 0.0 <= details["val_selected_on_val"] <= 100.0
    test_log = (out / "logs" / "test.log").read_text()
    assert "checkpoints/last.ckpt" in test_log  # the final weights were tested
    rows = {row["key"]: row for row in payload["rows"]}
    assert "final step" in rows["val"]["description"]
    assert "selected on val" in rows["val_selected_on_val"]["description"]
    assert rows["val_selected_on_val"]["paper"] is None


@pytest.mark.slow
def test_coco_dry_run_writes_its_table(tmp_path: Path) -> None:
    """``reproduce coco --dry_run``: synthetic COCO-format data, tiny models, every COCO stage
    (label, score, fit, test; predict is VOC's test server only)."""
    out = tmp_path / "repro"
    result = run_cli(
        ["reproduce", "coco", "--dry_run", "--output_dir", str(out)], tmp_path, timeout=900
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for stage in ("label", "score", "fit", "test"):
        assert (out / "logs" / f"{stage}.log").is_file()
    assert "per-rank batches [4]" in (out / "logs" / "fit.log").read_text()
    payload = json.loads((out / "results.json").read_text())
    assert payload["dataset"] == "coco" and payload["dry_run"] is True
    assert [r["paper"] for r in payload["rows"]] == [t.paper for t in PAPER["coco"]]
    rows = {row["key"]: row for row in payload["rows"]}
    for key in ("pseudo_train", "val"):
        assert 0.0 <= rows[key]["ours"] <= 100.0
    table = (out / "results.md").read_text()
    assert "| 66.8 |" in table and "| 55.6 |" in table and "dry run" in table
    _check_final_step_headline(out, payload, max_steps=6)


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


def test_paper_configs_test_without_flip_and_report_the_final_step() -> None:
    """What `reproduce` runs: configs/voc.yaml and coco.yaml resolve to no test-time flip, and
    the headline val row is the final step's (the best-on-val checkpoint only beside it)."""
    from wsss_pl.reproduce import REPO_CONFIGS

    for dataset in ("voc", "coco"):
        config = yaml.safe_load((REPO_CONFIGS / f"{dataset}.yaml").read_text())
        assert config["model"]["test_flip"] is False
        keys = [t.key for t in PAPER[dataset]]
        assert keys.index("val_selected_on_val") == keys.index("val") + 1
        val = next(t for t in PAPER[dataset] if t.key == "val")
        assert "final step" in val.description and "flip" not in val.description


def test_final_and_selected_checkpoints_are_told_apart(tmp_path: Path) -> None:
    import torch

    directory = tmp_path / "wandb" / "p" / "run" / "checkpoints"
    directory.mkdir(parents=True)
    torch.save({"global_step": 100}, directory / "step000100-miou61.20.ckpt")
    torch.save({"global_step": 200}, directory / "last.ckpt")
    reproduction = Reproduction("voc", tmp_path)
    assert reproduction.final_checkpoint().name == "last.ckpt"
    assert reproduction.best_checkpoint().name == "step000100-miou61.20.ckpt"
    from wsss_pl.reproduce import _checkpoint_step

    assert _checkpoint_step(reproduction.final_checkpoint()) == 200
    assert _checkpoint_step(reproduction.best_checkpoint()) == 100
