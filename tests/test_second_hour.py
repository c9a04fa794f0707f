"""A newcomer's second hour (issue 16), through the real CLI: a second fit keeps the first run's
checkpoints, typos at any depth get "did you mean", abbreviations are refused, one mIoU unit
(percent), review images on disk for every logger, and ``--help`` without torch."""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cli_runner import DEMO_CONFIG, FAST_OVERRIDES, REPO, run_cli_in_process

ONE_EPOCH = [*FAST_OVERRIDES, "--trainer.max_epochs", "1"]  # the last value wins


def _digests(folder: Path) -> dict[str, str]:
    """sha256 of every ``*.ckpt`` directly in ``folder``, by name."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.glob("*.ckpt")}


def _fit(workdir: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """One fast demo epoch in ``workdir``, without a logger (W&B runs are the review test's)."""
    args = ["fit", "--config", str(DEMO_CONFIG), *ONE_EPOCH, "--trainer.logger", "false", *extra]
    result = run_cli_in_process(args, workdir)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


# --------------------------------------------------------------------------- 1: no lost checkpoint


@pytest.mark.slow
def test_second_fit_keeps_the_first_runs_checkpoints(tmp_path: Path) -> None:
    base = tmp_path / "runs/demo/checkpoints"
    first = _fit(tmp_path)
    before = _digests(base)
    assert "last.ckpt" in before and len(before) == 2, before  # best and last
    assert f"checkpoints folder: {base}" in first.stdout
    second = _fit(tmp_path)
    assert _digests(base) == before  # byte-identical, none added or removed
    assert "runs/demo/checkpoints holds an earlier run's checkpoints, kept" in second.stderr
    assert "--ckpt_path" in second.stderr and "--overwrite_checkpoints true" in second.stderr
    assert f"checkpoints folder: {base / 'version_1'}" in second.stdout
    assert set(_digests(base / "version_1")) == set(before)
    # A third run takes the next free folder; asked to, a run writes into the configured one.
    _fit(tmp_path)
    assert (base / "version_2" / "last.ckpt").is_file() and _digests(base) == before
    _fit(tmp_path, "--overwrite_checkpoints", "true")
    assert _digests(base)["last.ckpt"] != before["last.ckpt"]
    assert not (base / "version_3").exists()


def test_resumed_fit_continues_in_its_folder(tmp_path: Path) -> None:
    from wsss_pl.lightning_cli import next_run_folder

    base = tmp_path / "checkpoints"
    assert next_run_folder(base, None) == base  # nothing there yet
    base.mkdir()
    (base / "notes.txt").write_text("x")
    assert next_run_folder(base, None) == base  # no checkpoint yet
    (base / "last.ckpt").write_bytes(b"1")
    assert next_run_folder(base, None) == base / "version_1"
    (base / "version_1").mkdir()
    assert next_run_folder(base, None) == base / "version_1"  # an empty version is reused
    (base / "version_1" / "last.ckpt").write_bytes(b"2")
    assert next_run_folder(base, None) == base / "version_2"
    assert next_run_folder(base, str(base / "last.ckpt")) == base
    assert next_run_folder(base, str(base / "version_1" / "last.ckpt")) == base / "version_1"
    assert next_run_folder(base, str(tmp_path / "elsewhere.ckpt")) == base / "version_2"
    assert next_run_folder(base, "last") == base  # Lightning's keyword: the configured folder


# --------------------------------------------------------------------------- 2: typos at any depth


def _error_line(args: list[str], tmp_path: Path) -> str:
    result = run_cli_in_process(args, tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2 and lines[1].endswith("--help` lists every option"), lines
    return lines[0]


def test_misspelt_nested_keys_get_did_you_mean(tmp_path: Path) -> None:
    demo = str(DEMO_CONFIG)
    online = str(REPO / "configs" / "demo_online.yaml")
    line = _error_line(
        ["fit", "--config", online, "--data.train_labels.init_args.box_treshold", "0.2"], tmp_path
    )
    assert line == (
        "wsss_pl fit: error: unknown key data.train_labels.init_args.box_treshold: "
        "wsss_pl.labeling.online.OnlinePseudoLabels has no parameter 'box_treshold' "
        "(did you mean data.train_labels.init_args.box_threshold?)"
    )
    nested = tmp_path / "nested.yaml"
    nested.write_text(
        yaml.safe_dump(
            {
                "data": {
                    "train_labels": {
                        "class_path": "wsss_pl.labeling.online.OnlinePseudoLabels",
                        "init_args": {"box_treshold": 0.2},
                    }
                }
            }
        )
    )
    line = _error_line(["fit", "--config", demo, "--config", str(nested)], tmp_path)
    assert f"unknown key data.train_labels.init_args.box_treshold in {nested}" in line
    assert line.endswith("(did you mean data.train_labels.init_args.box_threshold?)")
    # Two levels down (a class inside a class's init_args), on the command line and in YAML.
    deep = "data.train_labels.init_args.segmenter.init_args"
    line = _error_line(
        ["fit", "--config", online, "--data.train_labels.init_args.segmenter",
         "wsss_pl.labeling.segmenters.SamSpec", f"--{deep}.checkpont", "tiny"],
        tmp_path,
    )  # fmt: skip
    assert line == (
        f"wsss_pl fit: error: unknown key {deep}.checkpont: wsss_pl.labeling.segmenters.SamSpec "
        f"has no parameter 'checkpont' (did you mean {deep}.checkpoint?)"
    )
    deep_yaml = tmp_path / "deep.yaml"
    segmenter = {"class_path": "wsss_pl.labeling.segmenters.SamSpec",
                 "init_args": {"checkpont": "tiny"}}  # fmt: skip
    deep_yaml.write_text(
        yaml.safe_dump({"data": {"train_labels": {"init_args": {"segmenter": segmenter}}}})
    )
    line = _error_line(["fit", "--config", online, "--config", str(deep_yaml)], tmp_path)
    assert f"unknown key {deep}.checkpont in {deep_yaml}:" in line
    assert line.endswith(f"(did you mean {deep}.checkpoint?)")
    # Inside a list: the item's index, as the file has it.
    callbacks = tmp_path / "callbacks.yaml"
    callbacks.write_text(
        "trainer:\n  callbacks:\n    - class_path: lightning.pytorch.callbacks.ModelCheckpoint\n"
        "      init_args:\n        dirpat: x\n"
    )
    line = _error_line(["fit", "--config", demo, "--config", str(callbacks)], tmp_path)
    assert f"unknown key trainer.callbacks[0].init_args.dirpat in {callbacks}:" in line
    assert line.endswith("(did you mean trainer.callbacks[0].init_args.dirpath?)")
    for key, meant in (
        ("trainer.logger.init_args.projec", "trainer.logger.init_args.project"),
        ("model.optimizer.init_args.lrr", "model.optimizer.init_args.lr"),
    ):
        line = _error_line(["validate", "--config", demo, f"--{key}", "1"], tmp_path)
        assert line.startswith(f"wsss_pl validate: error: unknown key {key}:")
        assert line.endswith(f"(did you mean {meant}?)")


def test_abbreviated_options_are_refused(tmp_path: Path) -> None:
    line = _error_line(
        ["fit", "--config", str(DEMO_CONFIG), "--trainer.max_epoch", "3", "--print_config"],
        tmp_path,
    )
    assert line == (
        "wsss_pl fit: error: unknown option --trainer.max_epoch "
        "(did you mean --trainer.max_epochs?)"
    )
    line = _error_line(["label", "--config", str(DEMO_CONFIG), "--data.batch_siz", "3"], tmp_path)
    assert "unknown option --data.batch_siz (did you mean --data.batch_size?)" in line


# --------------------------------------------------------------------------- 7: fast answers


_PROBE = """
import atexit, sys
def heavy():
    loaded = sorted(m for m in ("torch", "lightning", "jsonargparse") if m in sys.modules)
    print("HEAVY=" + ",".join(loaded), file=sys.stderr)
atexit.register(heavy)
from wsss_pl.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _probe(args: list[str], cwd: Path) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``wsss_pl.cli.main(ARGS)`` in a fresh interpreter, whose
    stderr ends with the heavy modules it had imported."""
    result = subprocess.run(
        [sys.executable, "-c", _PROBE, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env={**__import__("os").environ, "PYTHONPATH": str(REPO)},
    )
    return result.returncode, result.stdout, result.stderr


def test_help_usage_and_config_errors_answer_without_torch(tmp_path: Path) -> None:
    code, out, err = _probe(["--help"], tmp_path)
    assert code == 0 and out.startswith("usage: wsss_pl COMMAND") and err.strip() == "HEAVY="
    code, _, err = _probe(["fti"], tmp_path)
    assert code == 2 and "did you mean fit?" in err and err.strip().endswith("HEAVY=")
    configs = REPO / "configs"
    code, _, err = _probe(["fit", "--config", str(configs / "dmeo.yaml")], tmp_path)
    assert code == 2 and err.strip().endswith("HEAVY=")
    assert f"config file {configs / 'dmeo.yaml'} does not exist (did you mean " in err
    broken = tmp_path / "broken.yaml"
    broken.write_text("trainer:\n  max_epochs: [1\n")
    code, _, err = _probe(["validate", "--config", str(broken)], tmp_path)
    assert code == 2 and err.strip().endswith("HEAVY=")
    assert re.search(rf"config file {re.escape(str(broken))} is not valid YAML at line \d", err)
    typo = tmp_path / "typo.yaml"
    typo.write_text("trainr:\n  max_epochs: 1\n")
    code, _, err = _probe(["fit", "--config", str(typo)], tmp_path)
    assert code == 2 and err.strip().endswith("HEAVY=")
    assert f"unknown key trainr in {typo} (did you mean trainer?)" in err
    code, out, err = _probe(["fit", "--help"], tmp_path)  # the short help: instant
    assert code == 0 and out.startswith("usage: wsss_pl fit") and err.strip().endswith("HEAVY=")
    # The probe can fail: the full list is LightningCLI's, which loads them.
    code, out, err = _probe(["fit", "--help", "full"], tmp_path)
    assert code == 0 and "torch" in err.strip().splitlines()[-1]


def test_config_sections_match_the_real_parsers() -> None:
    from wsss_pl.cli import CONFIG_SECTIONS
    from wsss_pl.lightning_cli import WsssCLI, build_cli

    class Stop(Exception):
        pass

    found: dict[str, WsssCLI] = {}

    class Probe(WsssCLI):
        def parse_arguments(self, parser: object, args: object) -> None:
            found["cli"] = self
            raise Stop

    with pytest.raises(Stop):
        build_cli(["fit"], cli_class=Probe)
    keys = {
        action.dest.split(".")[0]
        for parser in found["cli"]._subcommand_parsers.values()
        for action in parser._actions
    }
    assert keys - {"help", "config", "print_config"} == set(CONFIG_SECTIONS)


# --------------------------------------------------------------------------- 6: review images


def test_review_composite_has_titled_panels_and_a_legend_of_the_shown_classes(
    tmp_path: Path,
) -> None:
    import numpy as np
    from PIL import Image

    from wsss_pl.classes import VOC
    from wsss_pl.review import GAP, MIN_PANEL_WIDTH, PALETTE, TITLE_HEIGHT, write_composites

    names = ["background", *VOC.class_names]
    rng = np.random.default_rng(0)
    gt = np.zeros((40, 50), np.uint8)
    gt[5:20, 5:30] = 12  # dog
    gt[30:, :] = 255
    pred = np.zeros_like(gt)
    pred[5:25, 10:35] = 8  # cat
    row = {
        "id": "2007/000032",  # a path separator in an id must not make a folder
        "image": rng.integers(0, 256, (40, 50, 3), dtype=np.uint8),
        "ground_truth": gt,
        "prediction": pred,
        "error": (gt != pred).astype(np.uint8),
    }
    (path,) = write_composites(tmp_path, "val/predictions", [row], names, step=7)
    assert path.parent == tmp_path and path.name == "val_predictions_step000007_2007_000032.png"
    picture = np.asarray(Image.open(path).convert("RGB"))
    scale = -(-MIN_PANEL_WIDTH // 50)  # 50 px wide -> at least MIN_PANEL_WIDTH
    panel_w = 50 * scale
    assert panel_w >= MIN_PANEL_WIDTH and picture.shape[1] == 4 * panel_w + 3 * GAP
    for i in range(4):  # a title (dark text) above every panel
        band = picture[:TITLE_HEIGHT, i * (panel_w + GAP) : i * (panel_w + GAP) + panel_w]
        assert (band.sum(axis=2) < 200).sum() > 20, f"panel {i} has no title"
    gt_panel = picture[TITLE_HEIGHT : TITLE_HEIGHT + 40 * scale, panel_w + GAP : 2 * panel_w + GAP]
    assert (gt_panel[0, 0] == PALETTE[0]).all() and (gt_panel[-1, -1] == PALETTE[255]).all()
    legend = picture[TITLE_HEIGHT + 40 * scale :].reshape(-1, 3)
    colours = {tuple(c) for c in legend.tolist()}
    for label_id in (0, 8, 12, 255):  # every class shown has its swatch ...
        assert tuple(PALETTE[label_id].tolist()) in colours, label_id
    assert tuple(PALETTE[15].tolist()) not in colours  # ... and no other (person)


# --------------------------------------------------------------------------- 4: one cache, one score


@pytest.mark.slow
def test_label_pass_and_fit_score_the_same_cache_alike_without_augmentation(
    tmp_path: Path,
) -> None:
    """The label pass scores every cached label at full size; fit scores the crops it trains on.
    With crops as large as the images and no rescaling they are the same pixels, so the two
    numbers must be equal; each line says what it measures."""
    args = [
        "--config", str(REPO / "configs" / "demo_online.yaml"), "--trainer.logger", "false",
        "--data.source.init_args.num_train", "8", "--data.source.init_args.num_val", "2",
        "--data.source.init_args.image_size", "[48, 64]", "--data.batch_size", "4",
        "--data.num_workers", "0", "--data.crop_size", "64", "--data.scale_range", "[1.0, 1.0]",
    ]  # fmt: skip
    label = run_cli_in_process(["label", *args], tmp_path)
    assert label.returncode == 0, label.stderr[-3000:]
    assert "(every label at full image size, ground truth 255 ignored" in label.stdout
    (pass_miou,) = re.findall(r"^mIoU\s+([\d.]+)$", label.stdout, flags=re.MULTILINE)
    fit = run_cli_in_process(["fit", *args, "--trainer.max_epochs", "1"], tmp_path)
    assert fit.returncode == 0, fit.stderr[-3000:]
    (fit_miou,) = re.findall(
        r"training labels vs ground truth: mIoU ([\d.]+) \(last epoch's", fit.stdout
    )
    assert 0 < float(pass_miou) < 100 and fit_miou == pass_miou


# --------------------------------------------------------------------------- 8: noise


def test_progress_prints_its_final_line_once() -> None:
    import io

    from wsss_pl.progress import Progress

    out = io.StringIO()  # not a terminal: plain lines
    progress = Progress(4, "labelling", unit="img", file=out, interval_s=0.0)
    for _ in range(4):
        progress.update(1, cached=0)
    progress.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 4 and lines[-1].startswith("labelling: 4/4 img (100%)")
    quiet = io.StringIO()
    progress = Progress(4, "labelling", unit="img", file=quiet, interval_s=3600.0)
    progress.update(4)
    progress.close()  # nothing printed since the start: close prints the final line
    assert quiet.getvalue().splitlines()[0].startswith("labelling: 4/4 img (100%)")


@pytest.mark.slow
def test_fit_and_validate_output_off_a_terminal_is_quiet(tmp_path: Path) -> None:
    """Redirected output of fit and validate, with W&B's own output not silenced by the test:
    no wandb warnings or banners, no colour codes, no all-zero FLOPs, one metrics table."""
    from cli_runner import run_cli

    fit = run_cli(
        ["fit", "--config", str(DEMO_CONFIG), *ONE_EPOCH], tmp_path, unset=("WANDB_SILENT",)
    )
    assert fit.returncode == 0, fit.stderr[-3000:]
    both = fit.stdout + fit.stderr
    for noise in ("anonymous setting", "git root", "wandb: ", "\x1b[", "FLOPs", "Flops"):
        assert noise not in both, noise
    assert "Modules in train mode" in both  # the model summary is still there, as plain text
    assert "epoch 0 (1 of 1)" in both and "W&B run (offline): runs/demo/wandb/offline-run-" in both
    ckpt = tmp_path / "runs/demo/checkpoints/last.ckpt"
    validate = run_cli(
        ["validate", "--config", str(DEMO_CONFIG), *ONE_EPOCH, "--ckpt_path", str(ckpt)],
        tmp_path,
        unset=("WANDB_SILENT",),
    )
    assert validate.returncode == 0, validate.stderr[-3000:]
    both = validate.stdout + validate.stderr
    assert "Validate metric" not in both  # Lightning's table: ours below has the same numbers
    assert both.count("wsss_pl validate: val mIoU") == 1
