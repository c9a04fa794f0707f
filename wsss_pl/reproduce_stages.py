"""The stages of ``python -m wsss_pl reproduce`` (fetch, label, score, fit, test, predict), each
a ``python -m wsss_pl`` subprocess except ``score``, and their resumable results; the command
and its arguments are in ``wsss_pl.reproduce``, the table in ``wsss_pl.reproduce_table``."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import yaml
from lightning.pytorch.callbacks import Callback

from wsss_pl.errors import WsssError
from wsss_pl.reproduce_dry_run import dry_run_overrides
from wsss_pl.reproduce_table import PAPER, write_table

REPO_CONFIGS = Path(__file__).resolve().parents[1] / "configs"

STAGES = ("fetch", "label", "score", "fit", "test", "predict")


class ReproductionError(WsssError):
    """A stage of the reproduction failed; the message names its log."""


def _logger(out: Path, stage: str, offline: bool) -> dict[str, Any]:
    return {
        "class_path": "lightning.pytorch.loggers.WandbLogger",
        "init_args": {
            "project": "wsss_pl-reproduce",
            "name": f"{out.name}-{stage}",
            "save_dir": str(out),  # wandb writes into SAVE_DIR/wandb
            "offline": offline,
        },
    }


class Reproduction:
    """Runs the stages of one reproduction into ``out``; see the module docstring."""

    def __init__(
        self,
        dataset: str,
        out: Path,
        gpus: int = 1,
        root: Path | None = None,
        dry_run: bool = False,
        config: Path | None = None,
        extra_args: list[str] | None = None,
        offline: bool = False,
    ) -> None:
        if dataset not in PAPER:
            raise ReproductionError(f"dataset must be one of {sorted(PAPER)}, got {dataset!r}")
        self.dataset = dataset
        self.out = out.resolve()
        self.gpus = gpus
        self.root = root
        self.dry_run = dry_run
        self.config = config or REPO_CONFIGS / f"{dataset}.yaml"
        self.extra_args = list(extra_args or [])
        self.offline = offline or dry_run
        if not self.config.is_file():
            raise ReproductionError(f"config not found: {self.config}")
        self.results: dict[str, Any] = {}

    # -- plumbing ------------------------------------------------------------------------------

    def _overlay(self, stage: str, extra: dict[str, Any] | None = None) -> Path:
        """Write the stage's config overlay (merged over the main config) and return its path."""
        overlay: dict[str, Any] = dry_run_overrides(self.out, self.dataset) if self.dry_run else {}
        trainer = overlay.setdefault("trainer", {})
        trainer["default_root_dir"] = str(self.out / stage)
        trainer["logger"] = _logger(self.out, stage, self.offline)
        if not self.dry_run:
            trainer["devices"] = self.gpus
            trainer["strategy"] = "ddp" if self.gpus > 1 else "auto"
            if self.root is not None:
                source = overlay.setdefault("data", {}).setdefault("source", {})
                source.setdefault("init_args", {})["root"] = str(self.root)
        labels = overlay.setdefault("data", {}).setdefault("train_labels", {})
        labels.setdefault("init_args", {})["cache_root"] = str(self.out / "pseudo_labels")
        for key, value in (extra or {}).items():  # dotted keys: "trainer.callbacks", ...
            node = overlay
            *parents, leaf = key.split(".")
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = value
        path = self.out / "configs" / f"{stage}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(overlay, sort_keys=False))
        return path

    def _run(self, stage: str, args: list[str]) -> str:
        """Run ``python -m wsss_pl ARGS``; output is shown and kept in ``logs/<stage>.log``."""
        log_path = self.out / "logs" / f"{stage}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "wsss_pl", *args]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if self.offline:
            env.setdefault("WANDB_MODE", "offline")
            env.setdefault("HF_HUB_OFFLINE", "1")
        print(f"[reproduce] {stage}: {' '.join(command[2:])}", flush=True)
        start = time.perf_counter()
        lines: list[str] = []
        with log_path.open("w", encoding="utf-8") as log_file:
            process = subprocess.Popen(
                command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
            )
            assert process.stdout is not None
            for line in process.stdout:
                log_file.write(line)
                lines.append(line)
                if not self.dry_run:
                    print(f"  {line}", end="", flush=True)
            code = process.wait()
        seconds = time.perf_counter() - start
        print(
            f"[reproduce] {stage}: exit {code} after {seconds:.0f} s (log: {log_path})", flush=True
        )
        if code != 0:
            # The stage's output was shown above (not in a dry run): its error is not repeated.
            said = "its error is above" if not self.dry_run else _last_error(lines)
            raise ReproductionError(
                f"stage {stage!r} failed with exit code {code}: {said} (full log: {log_path})"
            )
        return "".join(lines)

    def _cli(self, command: str, stage: str, extra: dict[str, Any] | None = None) -> list[str]:
        return [
            command,
            "--config", str(self.config),
            "--config", str(self._overlay(stage, extra)),
            *self.extra_args,
        ]  # fmt: skip

    # -- stages --------------------------------------------------------------------------------

    def prepare_dry_run_data(self) -> None:
        if self.dataset == "coco":
            from wsss_pl.data.synthetic_coco import make_synthetic_coco

            make_synthetic_coco(self.out / "data", num_train=12, num_val=4, image_size=(96, 128))
            return
        from wsss_pl.data.synthetic import make_synthetic_voc

        make_synthetic_voc(self.out / "data", num_train=12, num_val=4, image_size=(96, 128))

    def fetch(self) -> None:
        # A dry run's tiny models and generated data need nothing: the table is empty.
        extra = {} if self.dry_run else {"data.source.init_args.download": True}
        overlay = self._overlay("fetch", extra)
        self._run("fetch", ["fetch", "--config", str(self.config), "--config", str(overlay)])

    def label(self) -> None:
        extra = {} if self.dry_run else {"data.source.init_args.download": True}
        self._run("label", self._cli("label", "label", extra))

    def cache_dir(self) -> Path:
        """The pseudo-label cache the label stage filled (newest manifest under pseudo_labels/)."""
        manifests = sorted(
            (self.out / "pseudo_labels").glob("*/*/manifest.json"), key=lambda p: p.stat().st_mtime
        )
        if not manifests:
            raise ReproductionError(
                f"no pseudo-label cache under {self.out / 'pseudo_labels'}: run the label stage"
            )
        return manifests[-1].parent

    def _data_base(self) -> Path:
        from wsss_pl.data.voc import find_voc_base

        root = (self.out / "data") if self.dry_run else (self.root or Path("data/VOCdevkit"))
        base = find_voc_base(root)
        if base is None:
            raise ReproductionError(f"no VOC 2012 layout under {root}; pass --root")
        return base

    def score(self) -> None:
        """Pseudo-label mIoU as WSSS papers report it.

        The label pass already scored its whole training split (VOC train_aug, COCO train) and
        wrote ``label_pass/quality.json``; VOC's ``train`` (1,464 ids, a subset of train_aug) is
        scored here from the cached PNGs.
        """
        cache = self.cache_dir()
        quality = cache / "label_pass" / "quality.json"
        key = "pseudo_train" if self.dataset == "coco" else "pseudo_train_aug"
        if quality.is_file():
            report = json.loads(quality.read_text())
            # percent since "unit" was added; older caches wrote fractions
            scale = 1 if report.get("unit") == "percent" else 100
            self.results[key] = report["miou"] * scale
        else:
            print(f"[reproduce] score: {quality} missing (rerun the label stage): {key} skipped")
        if self.dataset == "voc":
            self._score_voc_train(cache)
        self._save_partial()

    def _score_voc_train(self, cache: Path) -> None:
        from wsss_pl.data.voc import read_id_list, resolve_split
        from wsss_pl.evaluation import evaluate_label_dirs

        base = self._data_base()
        ids = read_id_list(resolve_split("train", base, base))
        gt_candidates = [
            base / "SegmentationClassAug",
            base.parent / "SegmentationClassAug",
            base / "VOC2012" / "SegmentationClass",
        ]
        gt_dir = next(
            (d for d in gt_candidates if d.is_dir() and (d / f"{ids[0]}.png").is_file()), None
        )
        if gt_dir is None:
            print("[reproduce] score: no ground truth for split train: skipped")
            return
        result = evaluate_label_dirs(cache, gt_dir, 21, ids=ids, missing_as_background=True)
        self.results["pseudo_train"] = result.miou * 100
        print(
            f"[reproduce] score: pseudo-labels on train ({len(ids)} ids): {result.miou * 100:.2f} mIoU"
        )

    def final_checkpoint(self) -> Path:
        """``last.ckpt``: the weights after the final step (validation and this checkpoint
        always follow the last step, ``wsss_pl.cadence``); the paper reports these."""
        last = sorted(self._checkpoints("last.ckpt"), key=lambda p: p.stat().st_mtime)
        if not last:
            raise ReproductionError(f"no last.ckpt under {self.out}: run the fit stage")
        return last[-1]

    def _checkpoints(self, pattern: str) -> list[Path]:
        """Checkpoints of the fit stage: Lightning puts them in SAVE_DIR/PROJECT/RUN_ID/
        checkpoints (``out/wsss_pl-reproduce/...``; ``out/wandb/...`` in older folders)."""
        folders = [self.out / "wsss_pl-reproduce", self.out / "wandb"]
        return [path for folder in folders for path in folder.rglob(pattern)]

    def best_checkpoint(self) -> Path:
        """The checkpoint of the best val/mIoU (from its file name), else ``last.ckpt``."""
        pattern = re.compile(r"miou(\d+\.\d+)")
        found = [
            (float(m.group(1)), path)
            for path in self._checkpoints("*.ckpt")
            if (m := pattern.search(path.name))
        ]
        if found:
            return max(found)[1]
        last = sorted(self._checkpoints("last.ckpt"), key=lambda p: p.stat().st_mtime)
        if not last:
            raise ReproductionError(f"no checkpoint under {self.out}: run the fit stage")
        return last[-1]

    def fit(self) -> None:
        self._run("fit", self._cli("fit", "fit"))

    def _test_checkpoint(self, stage: str, checkpoint: Path) -> dict[str, float]:
        metrics_path = self.out / f"{stage}_metrics.json"
        callbacks = [{"class_path": "wsss_pl.reproduce.MetricsJsonWriter",
                      "init_args": {"path": str(metrics_path)}}]  # fmt: skip
        args = self._cli("test", stage, {"trainer.callbacks": callbacks})
        self._run(stage, [*args, "--ckpt_path", str(checkpoint)])
        return json.loads(metrics_path.read_text())

    def test(self) -> None:
        """The final weights on val (the headline), then the best-on-val checkpoint (beside it,
        labelled selected on val; not tested again when it is the final step's)."""
        final, best = self.final_checkpoint(), self.best_checkpoint()
        final_step, best_step = _checkpoint_step(final), _checkpoint_step(best)
        metrics = self._test_checkpoint("test", final)
        self.results["val"] = metrics["test/mIoU"]  # logged in percent
        self.results["val_step"] = final_step
        self.results["val_per_class"] = {
            k.split("/", 2)[2]: v for k, v in metrics.items() if k.startswith("test/IoU/")
        }
        if best_step == final_step:
            self.results["val_selected_on_val"] = self.results["val"]
        else:
            selected = self._test_checkpoint("test_selected_on_val", best)
            self.results["val_selected_on_val"] = selected["test/mIoU"]
        self.results["val_selected_on_val_step"] = best_step
        print(
            f"[reproduce] test: final step {final_step}: {self.results['val']:.2f} mIoU; "
            f"best-on-val checkpoint (step {best_step}, selected on val): "
            f"{self.results['val_selected_on_val']:.2f}"
        )
        self._save_partial()

    def predict(self) -> None:
        if self.dataset != "voc":
            return  # COCO: the paper reports val only
        output = self.out / "results" / "VOC2012" / "Segmentation" / "comp6_test_cls"
        if not self.dry_run and not self._has_voc_test():
            print(
                "[reproduce] predict: VOC 2012 test images not found (VOC2012/ImageSets/"
                "Segmentation/test.txt); get VOC2012test.tar from the PASCAL evaluation server, "
                "extract it over the VOC root and rerun with --stages predict"
            )
            return
        extra: dict[str, Any] = {
            "trainer.callbacks": [
                {"class_path": "wsss_pl.callbacks.PaletteWriter",
                 "init_args": {"output_dir": str(output)}}
            ],
        }  # fmt: skip
        if not self.dry_run:
            extra["data.source.init_args.predict_split"] = "test"
        args = self._cli("predict", "predict", extra)
        # This folder is the reproduction's own: a rerun of the stage replaces its PNGs.
        checkpoint = str(self.final_checkpoint())
        self._run("predict", [*args, "--ckpt_path", checkpoint, "--overwrite", "true"])
        archive = self.out / "results.tar.gz"
        with tarfile.open(archive, "w:gz") as tar:
            tar.add(self.out / "results", arcname="results")
        count = len(list(output.glob("*.png")))
        self.results["test_predictions"] = {
            "dir": str(output),
            "count": count,
            "archive": str(archive),
        }
        print(f"[reproduce] predict: {count} PNGs in {output}; upload {archive}")
        self._save_partial()

    def _has_voc_test(self) -> bool:
        try:
            base = self._data_base()
        except ReproductionError:
            return False
        return (base / "VOC2012" / "ImageSets" / "Segmentation" / "test.txt").is_file() or (
            base / "ImageSets" / "Segmentation" / "test.txt"
        ).is_file()

    # -- results -------------------------------------------------------------------------------

    def _save_partial(self) -> None:
        """The results so far, for a resumed run; ``table`` replaces this by results.json."""
        (self.out / PARTIAL).write_text(json.dumps(self.results, indent=1))

    def table(self) -> str:
        """Markdown table of ours beside the paper's numbers; also written to results.md/.json."""
        markdown = write_table(self.out, self.dataset, self.results, self.dry_run, self.config)
        (self.out / PARTIAL).unlink(missing_ok=True)  # results.json holds them all now
        return markdown

    def run(self, stages: tuple[str, ...] = STAGES) -> str:
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / MARKER).touch()
        finished, partial = self.out / "results.json", self.out / PARTIAL
        if finished.is_file():  # a finished reproduction rerun with some stages
            self.results.update(json.loads(finished.read_text()).get("details") or {})
        if partial.is_file():  # stages of an interrupted run since
            self.results.update(json.loads(partial.read_text()))
        if self.dry_run:
            self.prepare_dry_run_data()
        for stage in stages:
            if stage in IN_PROCESS_STAGES:  # the others log through _run
                with _tee_stdout(self.out / "logs" / f"{stage}.log"):
                    getattr(self, stage)()
            else:
                getattr(self, stage)()
        markdown = self.table()
        print(markdown)
        print(
            f"[reproduce] table saved to {self.out / 'results.md'} and {self.out / 'results.json'}"
        )
        return markdown


# Stages that run in this process (no subprocess of their own): their output is teed to a log.
IN_PROCESS_STAGES = ("score",)

# Written into --output_dir: a folder holding it (or a reproduction's files) is resumed, others refused.
MARKER = ".wsss_pl_reproduce"

# The results of the stages run so far while a reproduction runs (removed at its end).
PARTIAL = "results.partial.json"

_OWN_FILES = (MARKER, PARTIAL, "results.json", "configs", "logs")


def _checkpoint_step(path: Path) -> int | None:
    """The ``global_step`` stored in a Lightning checkpoint (None when it has none)."""
    import torch

    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (OSError, RuntimeError, ValueError) as error:
        raise ReproductionError(f"cannot read checkpoint {path}: {error}") from None
    step = checkpoint.get("global_step") if isinstance(checkpoint, dict) else None
    return int(step) if step is not None else None


def _last_error(lines: list[str]) -> str:
    """The line of a stage's output that says what failed: its last ``error:`` line, else its
    last non-empty line."""
    text = [line.strip() for line in lines if line.strip()]
    errors = [line for line in text if "error:" in line.lower()]
    return (errors or text or ["(no output)"])[-1]


class _Tee(io.TextIOBase):
    """A text stream writing to two others (the terminal and a stage log)."""

    def __init__(self, *streams: Any) -> None:
        self.streams = streams

    def write(self, text: str) -> int:
        for stream in self.streams:
            stream.write(text)
        return len(text)

    def flush(self) -> None:
        for stream in self.streams:
            stream.flush()


@contextlib.contextmanager
def _tee_stdout(log_path: Path) -> Iterator[None]:
    """Copy what the block prints to ``log_path`` too (replaced, like the other stage logs)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with (
        log_path.open("w", encoding="utf-8") as log_file,
        contextlib.redirect_stdout(_Tee(sys.stdout, log_file)),
    ):
        yield


class MetricsJsonWriter(Callback):
    """Writes the test metrics (floats) to ``path`` as JSON, on global rank 0."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero:
            metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps(metrics, indent=1, sort_keys=True))
