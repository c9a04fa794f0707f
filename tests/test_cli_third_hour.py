"""A newcomer's third hour (issue 21), through the real CLI: predict keeps earlier predictions,
val mIoU in the terminal's progress bar, one-line type errors, a short ``--help``, one option
spelling for every command, the command-line batch size wins, no stray W&B run folders."""

from __future__ import annotations

import fcntl
import hashlib
import importlib
import inspect
import os
import pty
import re
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest
import yaml

from cli_runner import DEMO_CONFIG, FAST_OVERRIDES, REPO, run_cli_in_process
from wsss_pl.cli import main

ONE_EPOCH = [*FAST_OVERRIDES, "--trainer.max_epochs", "1"]  # the last value wins


def _error(args: list[str], capsys: pytest.CaptureFixture[str]) -> list[str]:
    """stderr lines of a command line refused with exit code 2."""
    try:
        code = main(args)
    except SystemExit as exit_:
        code = exit_.code
    assert code == 2
    return capsys.readouterr().err.strip().splitlines()


# --------------------------------------------------------------------------- 3: errors and help


def test_type_errors_are_one_line_naming_key_type_and_value(
    capsys: pytest.CaptureFixture[str],
) -> None:
    demo = ["--config", str(DEMO_CONFIG)]
    assert _error(["fit", *demo, "--trainer.max_epochs", "abc"], capsys) == [
        "wsss_pl fit: error: trainer.max_epochs must be an integer or null, got 'abc'",
        "`wsss_pl fit --help` lists every option",
    ]
    first = _error(["validate", *demo, "--model.net.init_args.num_classes", "x"], capsys)[0]
    assert first == (
        "wsss_pl validate: error: model.net.init_args.num_classes must be an integer, got 'x'"
    )
    first = _error(["fit", *demo, "--trainer.precision", "bf61-mixed"], capsys)[0]
    assert first.startswith("wsss_pl fit: error: trainer.precision must be one of ")
    assert first.endswith("got 'bf61-mixed' (did you mean 'bf16-mixed'?)")
    first = _error(["fit"], capsys)[0]
    assert first == (
        "wsss_pl fit: error: no model.net and no data.source given: start from a config, e.g. "
        "`wsss_pl fit --config configs/demo.yaml` (configs/ holds one per dataset)"
    )


def _subcommand_keys(command: str) -> set[str]:
    """Every ``--key`` the real LightningCLI parser of ``command`` accepts."""
    from wsss_pl.lightning_cli import WsssCLI, build_cli

    class Stop(Exception):
        pass

    found: dict[str, WsssCLI] = {}

    class Probe(WsssCLI):
        def parse_arguments(self, parser: object, args: object) -> None:
            found["cli"] = self
            raise Stop

    with pytest.raises(Stop):
        build_cli([command], cli_class=Probe)
    parser = found["cli"]._subcommand_parsers[command]
    return {s for a in parser._actions for s in a.option_strings}


@pytest.mark.parametrize("command", ["fit", "predict"])
def test_short_help_is_grouped_and_names_only_real_options(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([command, "--config", str(DEMO_CONFIG), "--help"]) == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    assert lines[0].startswith(f"usage: wsss_pl {command} ") and len(lines) < 120
    assert {"config:", "data (wsss_pl.data.datamodule.WSSSDataModule):"} <= set(lines)
    assert f"wsss_pl {command} --help full" in text
    named = {word for line in lines for word in line.split() if word.startswith("-")}
    named -= {"-h", "--help", "-c,", "[-c", "[-h", "[--KEY", "--help`", "--trainer.KEY"}
    # Keys inside a class (--model.net.init_args.X): a parameter of the demo config's class.
    demo = yaml.safe_load(DEMO_CONFIG.read_text())
    nested = {key for key in named if ".init_args." in key}
    for key in nested:
        section, name, _, parameter = key[2:].split(".")
        module, cls = demo[section][name]["class_path"].rsplit(".", 1)
        signature = inspect.signature(getattr(importlib.import_module(module), cls))
        assert parameter in signature.parameters, key
    assert named - nested <= _subcommand_keys(command), named - nested - _subcommand_keys(command)
    own = "--overwrite_checkpoints" if command == "fit" else "--overwrite"
    assert own in named


def test_full_help_and_class_help_name_the_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--help", "full"])
    assert exit_info.value.code == 0
    full = capsys.readouterr().out
    assert full.startswith("usage: wsss_pl fit") and full.count("\n") > 500
    assert "--trainer.gradient_clip_val" in full  # an option the short help leaves out
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(DEMO_CONFIG), "--data.source.help", "SyntheticVOC"])
    help_text = capsys.readouterr().out
    assert help_text.startswith("usage: wsss_pl fit ") and "__main__" not in help_text
    assert "--data.source.num_train" in help_text


# --------------------------------------------------------------------------- 4: one spelling


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["evaluate-labels", "--pred", "p", "--gt", "g", "--num-classes", "3"],
         "unknown option --num-classes (did you mean --num_classes?)"),
        (["evaluate-labels", "--pred", "p", "--gt", "g", "--missing-as-background"],
         "unknown option --missing-as-background (did you mean --missing_as_background?)"),
        (["export-labels", "--cache", "c", "--output", "o.json", "--image-ext", ".png"],
         "unknown option --image-ext (did you mean --image_ext?)"),
        (["export-model", "--ckpt", "m.ckpt", "--out", "m.onnx"],
         "unknown option --out (did you mean --output?)"),
        (["export-model", "--ckpt", "m.ckpt", "--output", "labels"],
         "--output is the file to write; for what the graph returns use --output_type labels"),
        (["reproduce", "voc", "--dry-run"], "unknown option --dry-run (did you mean --dry_run?)"),
        (["reproduce", "voc", "--out=runs/x"],
         "unknown option --out (did you mean --output_dir?)"),
    ],
)  # fmt: skip
def test_old_spellings_are_refused_with_did_you_mean(
    args: list[str], expected: str, tmp_path: Path
) -> None:
    result = run_cli_in_process(args, tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines[0] == f"wsss_pl {args[0]}: error: {expected}", lines
    assert "usage:" not in result.stderr and list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- 1, 2, 4, 7 end to end


def _in_terminal(args: list[str], cwd: Path) -> tuple[int, str]:
    """``python -m wsss_pl ARGS`` with stdout and stderr on a 250-column pseudo-terminal, as a
    user runs it: (exit code, everything it drew)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 250, 0, 0))
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "HF_HUB_OFFLINE": "1",
           "OMP_NUM_THREADS": "1", "COLUMNS": "250"}  # fmt: skip
    process = subprocess.Popen(
        [sys.executable, "-m", "wsss_pl", *args], cwd=cwd, stdout=slave, stderr=slave, env=env
    )
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    return process.wait(timeout=600), b"".join(chunks).decode(errors="replace")


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.glob("*.png")}


@pytest.mark.slow
def test_terminal_bar_predict_folders_batch_size_rule_and_wandb_folders(tmp_path: Path) -> None:
    # A paper-style config sets data.global_batch_size; --data.batch_size on the command line
    # wins without --data.global_batch_size null (16 images / 8 = 2 steps, not 16 / 4 = 4).
    paper = tmp_path / "paper.yaml"
    paper.write_text(yaml.safe_dump({"data": {"batch_size": None, "global_batch_size": 4}}))
    fit = ["fit", "--config", str(DEMO_CONFIG), "--config", str(paper), *ONE_EPOCH]
    code, shown = _in_terminal([*fit, "--data.batch_size", "8"], tmp_path)
    assert code == 0, shown[-3000:]
    assert "fit finished: 1 epochs, 2 steps" in shown
    # 2: the bar (rich or tqdm) carries val mIoU after validation, the summary's value.
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", shown)
    bars = re.findall(r"Epoch 0.*?train/loss[:=] ?[\d.]+ val/mIoU[:=] ?([\d.]+)", plain)
    assert bars, plain[-3000:]
    assert re.search(rf"val mIoU: last {float(bars[-1]):.2f} \(epoch 0\)", plain)
    assert "validation: " not in shown  # the plain-line progress is for files, not terminals
    assert len(list(tmp_path.glob("runs/demo/wandb/offline-run-*"))) == 1  # fit's W&B run

    # 1 and 7: predict starts no W&B run and keeps an earlier predict's PNGs.
    ckpt = str(tmp_path / "runs/demo/checkpoints/last.ckpt")
    predict = ["predict", "--config", str(DEMO_CONFIG), *ONE_EPOCH, "--ckpt_path", ckpt]
    first = run_cli_in_process(predict, tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    folder = tmp_path / "runs/demo/predictions"
    assert "wrote 4 palette PNGs to runs/demo/predictions" in first.stdout
    assert "no W&B run for predict" in first.stdout
    assert f"resolved config: {Path('runs/demo/predictions/run_config.yaml')}" in first.stdout
    before = _digests(folder)
    assert len(before) == 4
    second = run_cli_in_process([*predict, "--model.test_flip", "true"], tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert (
        "wsss_pl predict: runs/demo/predictions holds an earlier run's predictions, kept; this "
        "run writes to runs/demo/predictions/version_1 (replace them with --overwrite true)"
    ) in second.stderr
    assert _digests(folder) == before and len(_digests(folder / "version_1")) == 4
    third = run_cli_in_process([*predict, "--overwrite", "true"], tmp_path)
    assert third.returncode == 0, third.stderr[-3000:]
    assert "wrote 4 palette PNGs to runs/demo/predictions\n" in third.stdout
    assert not (folder / "version_2").exists() and "holds an earlier" not in third.stderr
    assert len(list(tmp_path.glob("runs/demo/wandb/offline-run-*"))) == 1  # still only fit's


def test_repo_has_no_dashed_options_left_in_docs() -> None:
    """The README and docs show the spellings the commands accept (command-line.md lists the
    old ones as refused)."""
    docs = [p for p in sorted((REPO / "docs").glob("*.md")) if p.name != "command-line.md"]
    texts = [REPO / "README.md", REPO / "scripts" / "reproduce.sh", *docs]
    old = ("--dry-run", "--num-classes", "--image-ext", "--raw-masks", "--no-progress",
           "--missing-as-background", "export-model --out", "reproduce voc --out")  # fmt: skip
    for path in texts:
        text = path.read_text(encoding="utf-8")
        for spelling in old:
            assert not re.search(re.escape(spelling) + r"(?![\w-])", text), f"{spelling} in {path}"
