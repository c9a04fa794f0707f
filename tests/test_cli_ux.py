"""What a newcomer meets at the command line: help, argument errors, W&B without a login, the
order of start-up checks, progress off a terminal, and the label pass's W&B review (issue 8)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cli_runner import DEMO_CONFIG, FAST_OVERRIDES, REPO, run_cli
from wsss_pl.classes import VOC
from wsss_pl.cli import COMMANDS, main, wandb_unavailable

# --------------------------------------------------------------------------- in-process (fast)


def _parse_error(args: list[str], capsys: pytest.CaptureFixture[str]) -> list[str]:
    """stderr lines of a command line rejected by the argument parser (exit code 2), or by the
    config-file check that runs before it (returned, not raised)."""
    try:
        code = main(args)
    except SystemExit as exit_:
        code = exit_.code
    assert code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines and "usage:" not in "\n".join(lines)  # the message, not 65 lines of usage
    return lines


def test_misspelt_keys_and_files_come_first_with_did_you_mean(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    demo = str(DEMO_CONFIG)
    first = _parse_error(["fit", "--config", demo, "--data.batch_sise", "4"], capsys)[0]
    assert first == (
        "wsss_pl fit: error: unknown option --data.batch_sise (did you mean --data.batch_size?)"
    )
    bad = tmp_path / "bad.yaml"
    bad.write_text("trainer:\n  max_epoch: 3\n")
    first = _parse_error(["validate", "--config", demo, "--config", str(bad)], capsys)[0]
    assert "trainer.max_epoch" in first and str(bad) in first
    assert first.endswith("(did you mean trainer.max_epochs?)")
    first = _parse_error(["fit", "--config", demo, "--model.net.init_args.backbon", "x"], capsys)[0]
    assert "model.net.init_args.backbon" in first
    assert first.endswith("(did you mean model.net.init_args.backbone?)")
    missing = REPO / "configs" / "dmeo.yaml"
    first = _parse_error(["test", "--config", str(missing)], capsys)[0]
    assert first.startswith(f"wsss_pl test: error: config file {missing} does not exist")
    assert first.endswith("demo.yaml?)")
    first = _parse_error(["label", "--config", str(tmp_path / "none.yaml")], capsys)[0]
    assert first == f"wsss_pl label: error: config file {tmp_path / 'none.yaml'} does not exist"


def test_unknown_command_and_command_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["fti"]) == 2
    assert "unknown command 'fti' (did you mean fit?)" in capsys.readouterr().err
    assert main(["fit", "--help"]) == 0  # the short help (tests/test_cli_third_hour.py)
    assert capsys.readouterr().out.startswith("usage: wsss_pl fit [-h [full]] [-c CONFIG ...]")


def test_wandb_unavailable_reasons(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_IDENTITY_TOKEN_FILE", raising=False)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # discard port: nothing listens
    assert "no API key" in (wandb_unavailable() or "")
    monkeypatch.setenv("WANDB_API_KEY", "0" * 40)
    assert wandb_unavailable() == "the W&B server http://127.0.0.1:9 cannot be reached"


@pytest.mark.slow
def test_evaluate_labels_progress_goes_to_stderr(tmp_path: Path) -> None:
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    pred.mkdir()
    gt.mkdir()
    rng = np.random.default_rng(0)
    for i in range(120):  # above PROGRESS_MIN_IMAGES
        label = rng.integers(0, 3, (4, 4), dtype=np.uint8)
        Image.fromarray(label, mode="L").save(gt / f"{i:04d}.png")
        Image.fromarray(label, mode="L").save(pred / f"{i:04d}.png")
    result = run_cli(
        ["evaluate-labels", "--pred", str(pred), "--gt", str(gt), "--format", "json",
         "--workers", "1"], tmp_path, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["num_images"] == 120  # stdout is pure JSON
    assert "evaluating: 120/120 img (100%)" in result.stderr


# --------------------------------------------------------------------------- through the real CLI

slow = pytest.mark.slow


@slow
def test_help_lists_every_command_under_its_name(tmp_path: Path) -> None:
    result = run_cli(["--help"], tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: wsss_pl COMMAND")
    assert "__main__" not in result.stdout
    listed = [line.split()[0] for line in result.stdout.splitlines() if line.startswith("  ")]
    assert listed == list(COMMANDS)
    assert {
        "fit",
        "validate",
        "test",
        "predict",
        "label",
        "evaluate-labels",
        "export-labels",
    } <= set(listed)


_WANDB_LOGIN = ("WANDB_MODE", "WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_BASE_URL")


@slow
def test_wandb_without_login_falls_back_offline_and_validate_prints_a_summary(
    tmp_path: Path,
) -> None:
    args = ["validate", "--config", str(DEMO_CONFIG), *FAST_OVERRIDES,
            "--trainer.logger.init_args.offline", "false"]  # fmt: skip
    no_login = {"HOME": str(tmp_path), "NETRC": str(tmp_path / "netrc")}
    result = run_cli(args, tmp_path, env=no_login, unset=_WANDB_LOGIN)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    fallback = [line for line in result.stderr.splitlines() if "W&B has no API key" in line]
    # validate's runs go beside fit's, not among them
    assert len(fallback) == 1 and "wandb sync runs/demo/validate/wandb/offline-run-*" in fallback[0]
    (run_dir,) = tmp_path.glob("runs/demo/validate/wandb/offline-run-*")
    assert (run_dir / "files" / "run_config.yaml").is_file()
    out = result.stdout.splitlines()
    (head,) = [line for line in out if line.startswith("wsss_pl validate: val mIoU ")]
    miou = float(head.split()[-1])
    table = out[out.index(head) + 2 : out.index(head) + 23]  # 21 VOC classes after the header
    assert table[0].split()[0] == "background" and table[-1].split()[0] == "tvmonitor"
    ious = [float(line.split()[1]) for line in table if line.split()[1] != "-"]
    assert abs(np.mean(ious) - miou) < 0.01
    assert f"W&B run (offline): {run_dir.relative_to(tmp_path)}" in result.stdout
    assert "resolved config: " in result.stdout
    assert "validation: 2/2 it (100%)" in result.stdout  # plain progress line, not a bar


@slow
def test_run_failing_at_start_up_leaves_no_wandb_run_folder(tmp_path: Path) -> None:
    # 5 classes in the net, 21 in the data: the module's setup refuses, after the W&B run began.
    args = ["validate", "--config", str(DEMO_CONFIG), *FAST_OVERRIDES,
            "--model.net.init_args.num_classes", "5"]  # fmt: skip
    result = run_cli(args, tmp_path)
    assert result.returncode != 0
    assert "num_classes is 5" in result.stderr
    assert (tmp_path / "runs/demo/validate/wandb").is_dir()  # W&B did start ...
    assert not list(tmp_path.glob("runs/demo/validate/wandb/*run-*"))  # ... its empty run is gone


@slow
def test_missing_dataset_is_reported_before_any_weight_download(tmp_path: Path) -> None:
    voc = REPO / "configs" / "voc.yaml"  # pretrained: resnet101_imagenet, not in the empty cache
    env = {"WSSS_PL_CACHE": str(tmp_path / "cache")}
    args = ["fit", "--config", str(voc), "--data.source.init_args.root", str(tmp_path / "nowhere")]
    result = run_cli(args, tmp_path, timeout=180, env=env)
    assert result.returncode == 2, result.stderr[-3000:]
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("wsss_pl: error:")]
    assert "VOC data is not in place" in line and "nowhere" in line
    assert "resnet" not in result.stderr.lower() and "Traceback" not in result.stderr
    assert not list(tmp_path.glob("**/wandb/*run-*"))


@slow
def test_label_pass_logs_review_media_and_worst_labels_to_wandb(tmp_path: Path) -> None:
    args = [
        "label", "--config", str(REPO / "configs" / "demo_online.yaml"),
        "--data.source.init_args.num_train", "6", "--data.source.init_args.num_val", "2",
        "--data.source.init_args.image_size", "[48, 64]", "--data.batch_size", "3",
        "--data.num_workers", "0",
    ]  # fmt: skip
    result = run_cli(args, tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    # No noise: Lightning's `args` warning and "predict returned None" are gone.
    assert "args parameter" not in result.stderr and "returned None" not in result.stderr
    assert "labelling: 6/6 img (100%)" in result.stderr  # plain progress off a terminal
    assert "worst pseudo-labels (image IoU %):" in result.stdout
    (run_dir,) = tmp_path.glob("runs/demo_online/wandb/offline-run-*")
    media = run_dir / "files" / "media"
    overlays = list((media / "images" / "label_pass").glob("review_*.png"))
    assert 1 <= len(overlays) <= 6
    masks = list((media / "images" / "mask" / "label_pass").glob("review_*.mask.png"))
    assert masks  # pseudo-label, ground truth and disagreement layers
    boxes = [
        box
        for path in (media / "metadata" / "boxes2D" / "label_pass").glob("review_*.json")
        for box in json.loads(path.read_text())["box_data"]
    ]
    assert boxes, "no detector boxes on the review images"
    for box in boxes:  # "class score"
        assert box["box_caption"].split(" (")[0].rsplit(" ", 1)[0] in VOC.class_names
    (table_file,) = (media / "table" / "label_pass").glob("worst_labels_*.table.json")
    table = json.loads(table_file.read_text())
    assert table["columns"] == ["id", "IoU", "classes", "missed classes"]
    ids = (tmp_path / "data/synthetic_voc/VOC2012/ImageSets/Segmentation/train.txt").read_text()
    assert len(table["data"]) == 6 and {row[0] for row in table["data"]} == set(ids.split())
    ious = [row[1] for row in table["data"]]
    assert ious == sorted(ious) and all(0 <= v <= 100 for v in ious)
    for _, _, classes, missed in table["data"]:
        assert set(filter(None, missed.split(", "))) <= set(classes.split(", "))
    # The worst image's IoU, recomputed from the cached pseudo-label and the ground truth.
    worst_id, worst_iou = table["data"][0][:2]
    (cache_dir,) = [
        p.parent for p in tmp_path.glob("runs/demo_online/pseudo_labels/*/*/manifest.json")
    ]
    label = np.asarray(Image.open(cache_dir / f"{worst_id}.png")).astype(np.int64)
    gt = np.asarray(
        Image.open(tmp_path / f"data/synthetic_voc/VOC2012/SegmentationClass/{worst_id}.png")
    ).astype(np.int64)
    valid = gt != 255
    ious_by_class = []
    for c in range(21):
        inter = ((label == c) & (gt == c) & valid).sum()
        union = (((label == c) | (gt == c)) & valid).sum()
        if union:
            ious_by_class.append(inter / union)
    assert abs(100 * np.mean(ious_by_class) - worst_iou) < 0.01
