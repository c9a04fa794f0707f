"""Lightning callbacks: the palette prediction writer, the run summary, plain-line progress and
the plain model summary; the review callback lives in ``wsss_pl.review_callback`` (re-exported
here, as configs name ``wsss_pl.callbacks.ReviewCallback``).

Predictions are written by the rank that made them.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import BasePredictionWriter, Callback, ModelSummary, ProgressBar
from lightning.pytorch.trainer.states import TrainerFn

from wsss_pl.io import write_label
from wsss_pl.progress import progress_line
from wsss_pl.review_callback import (  # noqa: F401  (re-exported: configs and callers name them here)
    ReviewCallback,
    colorize,
    disagreement,
    log_review,
    review_dir,
    review_row,
)

log = logging.getLogger(__name__)


class PaletteWriter(BasePredictionWriter):
    """Writes each prediction as ``<output_dir>/<id>.png`` (palette PNG, original image size)."""

    def __init__(self, output_dir: str = "predictions") -> None:
        super().__init__(write_interval="batch")
        self.output_dir = Path(output_dir)
        self.num_written = 0  # by this rank, for the CLI's closing summary

    def write_on_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        prediction: Any,
        batch_indices: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        palette = trainer.datamodule.vocabulary.palette()  # type: ignore[attr-defined]
        for sample_id, (height, width), pred in zip(
            prediction["id"], prediction["size"].tolist(), prediction["pred"], strict=True
        ):
            write_label(self.output_dir / f"{sample_id}.png", pred[:height, :width], palette)
            self.num_written += 1


class RunSummary(Callback):
    """Records what the CLI's closing summary prints (the CLI adds it to every run).

    ``val_history``: (epoch, mIoU) of every validation, sanity check excluded, read at
    ``on_validation_end`` from the module's freshly computed (rank-reduced) scores.
    """

    def __init__(self) -> None:
        self.val_history: list[tuple[int, float]] = []
        self.start = time.perf_counter()

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.start = time.perf_counter()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        scores = getattr(pl_module, "last_scores", {}).get("val")
        if scores is not None and not trainer.sanity_checking:
            self.val_history.append((trainer.current_epoch, float(scores["miou"])))


class LineProgressBar(ProgressBar):
    """Progress as plain lines on stdout, for output that is not a terminal (a log file).

    A line every ``interval_s`` seconds during a long epoch or evaluation (steps done, it/s, ETA,
    the progress-bar metrics), and one at the end of every training epoch and every evaluation.
    The CLI uses it instead of Lightning's bar when stdout is not a terminal.
    """

    def __init__(self, interval_s: float = 30.0) -> None:
        super().__init__()
        self.interval_s = interval_s
        self._enabled = True
        # One clock for the training epoch, one for the evaluation running inside it.
        self._clocks: dict[str, list[float]] = {}
        self._eval_done = 0

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    @property
    def is_enabled(self) -> bool:
        return self._enabled

    def _start(self, clock: str) -> None:
        now = time.perf_counter()
        self._clocks[clock] = [now, now]  # start, last line

    def _line(
        self, clock: str, desc: str, done: int, total: float, metrics: dict[str, Any], end: bool
    ) -> None:
        now = time.perf_counter()
        start, last = self._clocks.setdefault(clock, [now, now])
        if not self._enabled or (not end and now - last < self.interval_s):
            return
        self._clocks[clock][1] = now
        known_total = total if total and total != float("inf") else None
        shown = {k: _short(v) for k, v in metrics.items() if k != "v_num"}
        print(progress_line(desc, done, known_total, now - start, "it", **shown), flush=True)

    @staticmethod
    def _epoch(trainer: pl.Trainer) -> str:
        """'epoch 3 (4 of 16)': the 0-based epoch of the checkpoint names and the W&B epoch, then
        how many of how many ('epoch 15/15' for the last of 16 epochs read as one missing)."""
        epoch = trainer.current_epoch
        total = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else None
        return f"epoch {epoch} ({epoch + 1} of {total})" if total else f"epoch {epoch}"

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start("train")

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
        batch_idx: int,
    ) -> None:  # fmt: skip
        done, total = batch_idx + 1, self.total_train_batches
        metrics = self.get_metrics(trainer, pl_module)
        self._line("train", self._epoch(trainer), done, total, metrics, end=done == total)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        total = self.total_train_batches
        if not total or total == float("inf"):  # no end line was printed at the last batch
            done = trainer.fit_loop.epoch_loop.batch_progress.current.completed
            self._line("train", self._epoch(trainer), done, done, {}, end=True)

    def _eval_start(self, trainer: pl.Trainer) -> None:
        self.reset_dataloader_idx_tracker()
        if not trainer.sanity_checking:
            self._start("eval")
            self._eval_done = 0

    def _eval_batch(self, trainer: pl.Trainer, desc: str, dataloader_idx: int, kind: str) -> None:
        self.has_dataloader_changed(dataloader_idx)  # sets the base class's current dataloader
        total = getattr(self, f"total_{kind}_batches_current_dataloader")
        if not trainer.sanity_checking:
            self._eval_done += 1
            self._line("eval", desc, self._eval_done, total, {}, end=False)

    def _eval_end(self, trainer: pl.Trainer, desc: str, keys: tuple[str, ...]) -> None:
        if not trainer.sanity_checking:
            metrics = {k: v for k, v in trainer.callback_metrics.items() if k in keys}
            self._line("eval", desc, self._eval_done, self._eval_done, metrics, end=True)

    def _val_desc(self, trainer: pl.Trainer) -> str:
        fitting = trainer.state.fn == TrainerFn.FITTING
        return f"validation after {self._epoch(trainer)}" if fitting else "validation"

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._eval_start(trainer)

    def on_validation_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
        batch_idx: int, dataloader_idx: int = 0,
    ) -> None:  # fmt: skip
        self._eval_batch(trainer, self._val_desc(trainer), dataloader_idx, "val")

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._eval_end(trainer, self._val_desc(trainer), ("val/mIoU", "val/loss"))

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._eval_start(trainer)

    def on_test_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
        batch_idx: int, dataloader_idx: int = 0,
    ) -> None:  # fmt: skip
        self._eval_batch(trainer, "test", dataloader_idx, "test")

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._eval_end(trainer, "test", ("test/mIoU",))

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._eval_start(trainer)

    def on_predict_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
        batch_idx: int, dataloader_idx: int = 0,
    ) -> None:  # fmt: skip
        self._eval_batch(trainer, "predict", dataloader_idx, "predict")

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._eval_end(trainer, "predict", ())


def _short(value: Any) -> Any:
    """4 significant digits for floats and scalar tensors, anything else unchanged."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    return f"{value:.4g}" if isinstance(value, float) else value


class PlainModelSummary(ModelSummary):
    """Lightning's layer summary as plain text on stdout, without the FLOPs column and total
    when nothing computed them (Lightning measures FLOPs only for an ``example_input_array``;
    otherwise it prints a column of zeros and "Total FLOPs: 0")."""

    @staticmethod
    def summarize(
        summary_data: list[tuple[str, list[str]]],
        total_parameters: int,
        trainable_parameters: int,
        model_size: float,
        total_training_modes: dict[str, int],
        total_flops: int,
        **summarize_kwargs: Any,
    ) -> None:
        from lightning.pytorch.utilities.model_summary.model_summary import (
            _format_summary_table,
        )

        if not total_flops:
            summary_data = [column for column in summary_data if column[0] != "FLOPs"]
        table = _format_summary_table(
            total_parameters,
            trainable_parameters,
            model_size,
            total_training_modes,
            total_flops,
            *summary_data,
        )
        if not total_flops:
            table = "\n".join(
                line for line in table.splitlines() if "total flops" not in line.lower()
            )
        print(table, flush=True)
