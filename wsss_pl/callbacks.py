"""Review of labels and predictions (composite PNGs on disk for every logger, W&B masks) and writers.

Only global rank 0 logs or writes review files; predictions are written by the rank that made them.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter, Callback, ModelSummary, ProgressBar
from lightning.pytorch.loggers import Logger, TensorBoardLogger, WandbLogger
from lightning.pytorch.trainer.states import TrainerFn

from wsss_pl.classes import IGNORE_INDEX, voc_palette
from wsss_pl.io import write_label
from wsss_pl.progress import progress_line

log = logging.getLogger(__name__)

_PALETTE = np.array(voc_palette(), dtype=np.uint8).reshape(256, 3)


def colorize(label: np.ndarray) -> np.ndarray:
    """uint8 [H, W] class ids -> uint8 [H, W, 3] VOC colours."""
    return _PALETTE[label]


def disagreement(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """uint8 [H, W]: 1 where two label maps differ (ignore pixels of either excluded), else 0."""
    valid = (a != IGNORE_INDEX) & (b != IGNORE_INDEX)
    return ((a != b) & valid).astype(np.uint8)


NO_GT = "no ground truth for this image"
NO_VAL_LABEL = "no training label: validation images are not labelled (only training images are)"


def review_row(
    sample_id: str,
    image: np.ndarray,
    label: np.ndarray | None,
    ground_truth: np.ndarray | None,
    prediction: np.ndarray | None,
    notes: dict[str, str],
    boxes: list[dict[str, Any]] | None = None,
    label_key: str = "label",
) -> dict[str, Any]:
    """A review row in the README's order: image | label | ground truth | prediction | error.

    image uint8 [H, W, 3]; label, ground_truth, prediction uint8 [H, W] class ids or None (no
    data: ``notes`` says why, shown in the panel); error uint8 [H, W], 1 where the prediction
    differs from the ground truth (ignore excluded). ``boxes``: the detector's instances (pixel
    xyxy in this image), drawn on the label panel. ``label_key``: "label" (the training label)
    or "pseudo_label" (a label just made), which only changes the panel's title.
    """
    row: dict[str, Any] = {"id": sample_id, "image": image, label_key: label}
    row["ground_truth"] = ground_truth
    row["prediction"] = prediction
    row["error"] = (
        disagreement(prediction, ground_truth)
        if prediction is not None and ground_truth is not None
        else None
    )
    notes = dict(notes)
    if row["error"] is None:
        notes.setdefault("error", "no error map: it needs a prediction and ground truth")
    if ground_truth is None:
        notes.setdefault("ground_truth", NO_GT)
    row["notes"] = notes
    if boxes:
        row["boxes"] = boxes
    return row


def _augmented_boxes(
    instances: list[dict[str, Any]], geometry: list[float], crop: int
) -> list[dict[str, Any]]:
    """Boxes of the original image moved into its training crop (``BatchAugment`` geometry
    [scale_y, scale_x, top, left, flipped]); the review clips them to the crop."""
    scale_y, scale_x, top, left, flipped = geometry
    moved = []
    for inst in instances:
        x0, y0, x1, y1 = (float(v) for v in inst["box"])
        x0, x1 = x0 * scale_x - left, x1 * scale_x - left
        y0, y1 = y0 * scale_y - top, y1 * scale_y - top
        if flipped:
            x0, x1 = crop - x1, crop - x0
        moved.append({**inst, "box": [x0, y0, x1, y1]})
    return moved


@torch.no_grad()
def _predict_labels(pl_module: pl.LightningModule, images: torch.Tensor) -> np.ndarray:
    """uint8 [B, H, W] arg-max classes of the module for normalised float [B, 3, H, W] images,
    in eval mode (BatchNorm's running statistics are neither used from nor added to the batch)."""
    was_training = pl_module.training
    pl_module.eval()
    try:
        logits = pl_module(images)
    finally:
        pl_module.train(was_training)
    return logits.argmax(1).to(torch.uint8).cpu().numpy()


class ReviewCallback(Callback):
    """Shows where training labels, ground truth and predictions differ.

    Every ``every_n_epochs`` epochs, composites of image | label | ground truth | prediction |
    error (a panel without data says why), with the detector's boxes (class and score) on the
    label panel when the pseudo-label cache holds them: the first ``num_val_samples``
    validation images of rank 0 (label: the image's cached pseudo-label, if any); the first
    ``num_train_samples`` images of the epoch's first training batch as trained on (after
    augmentation; prediction by the model of that step in eval mode); the pseudo-labels made
    during the epoch at full size; and a per-class IoU table. With W&B the masks are
    ``wandb.Image`` mask layers with class names, toggled in the UI.
    """

    def __init__(
        self, num_val_samples: int = 8, num_train_samples: int = 4, every_n_epochs: int = 1
    ) -> None:
        self.num_val_samples = num_val_samples
        self.num_train_samples = num_train_samples
        self.every_n_epochs = max(1, every_n_epochs)
        self._val_rows: list[dict[str, Any]] = []

    def _active(self, trainer: pl.Trainer) -> bool:
        return (
            trainer.is_global_zero
            and not trainer.sanity_checking
            and trainer.current_epoch % self.every_n_epochs == 0
            and trainer.logger is not None
        )

    @staticmethod
    def _cache(trainer: pl.Trainer) -> Any:
        """The pseudo-label cache of the training labels, or None (ground-truth training)."""
        labels = getattr(getattr(trainer, "datamodule", None), "train_labels", None)
        return getattr(labels, "cache", None)

    @staticmethod
    def _numpy_images(pl_module: pl.LightningModule, images: torch.Tensor) -> np.ndarray:
        augment = pl_module.trainer.datamodule.augment  # type: ignore[attr-defined]
        return augment.denormalize(images).permute(0, 2, 3, 1).cpu().numpy()

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if batch_idx != 0 or not self._active(trainer) or self.num_train_samples <= 0:
            return
        count = min(self.num_train_samples, batch["image"].shape[0])
        images = self._numpy_images(pl_module, batch["image"][:count])
        predictions = _predict_labels(pl_module, batch["image"][:count])
        cache = self._cache(trainer)
        crop = batch["image"].shape[-1]
        rows = []
        for i in range(count):
            sample_id = batch["id"][i]
            has_gt = bool(batch["has_gt"][i])
            metadata = cache.load_metadata(sample_id) if cache is not None else None
            boxes = None
            if metadata and metadata.get("instances") and "aug_geometry" in batch:
                geometry = batch["aug_geometry"][i].tolist()
                boxes = _augmented_boxes(metadata["instances"], geometry, crop)
            rows.append(
                review_row(
                    sample_id,
                    images[i],
                    batch["target"][i].to(torch.uint8).cpu().numpy(),
                    batch["gt"][i].to(torch.uint8).cpu().numpy() if has_gt else None,
                    predictions[i],
                    {},
                    boxes,
                )
            )
        self._log(trainer, pl_module, "train/labels", rows)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Freshly made pseudo-labels at full size with their boxes (class and score), the
        model's prediction and ground truth."""
        labels = getattr(trainer.datamodule, "train_labels", None)  # type: ignore[attr-defined]
        recent = getattr(labels, "recent", None)
        if not recent:
            return
        if self._active(trainer):
            augment = trainer.datamodule.augment  # type: ignore[attr-defined]
            rows = []
            for item in recent:
                image = item["image"].to(pl_module.device)
                normalised = augment.normalize(image[None].float())
                rows.append(
                    review_row(
                        item["id"],
                        item["image"].permute(1, 2, 0).numpy(),
                        item["label"].numpy(),
                        None if item["gt"] is None else item["gt"].numpy(),
                        _predict_labels(pl_module, normalised)[0],
                        {},
                        item["metadata"]["instances"],
                        label_key="pseudo_label",
                    )
                )
            self._log(trainer, pl_module, "train/pseudo_labels", rows)
        recent.clear()

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._val_rows = []

    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        missing = self.num_val_samples - len(self._val_rows)
        if missing <= 0 or not self._active(trainer) or not isinstance(outputs, torch.Tensor):
            return
        count = min(missing, batch["image"].shape[0])
        images = self._numpy_images(pl_module, batch["image"][:count])
        cache = self._cache(trainer)
        for i in range(count):
            height, width = batch["size"][i].tolist()
            crop = (slice(0, height), slice(0, width))
            sample_id = batch["id"][i]
            label = cache.load(sample_id) if cache is not None else None
            metadata = cache.load_metadata(sample_id) if label is not None else None
            has_gt = bool(batch["has_gt"][i])
            self._val_rows.append(
                review_row(
                    sample_id,
                    images[i][crop],
                    None if label is None else label.numpy(),
                    batch["gt"][i][crop].to(torch.uint8).cpu().numpy() if has_gt else None,
                    outputs[i][crop].to(torch.uint8).cpu().numpy(),
                    {"label": NO_VAL_LABEL},
                    (metadata or {}).get("instances"),
                )
            )

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._active(trainer) and self._val_rows:
            self._log(trainer, pl_module, "val/predictions", self._val_rows)

    # The IoU tables are logged at *_end, not *_epoch_end: callbacks' on_*_epoch_end runs before
    # the module's, which computes this evaluation's scores (from the confusion matrix reduced
    # across ranks). At *_end they are this evaluation's, never the previous one's.
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero and not trainer.sanity_checking:
            self._log_iou_table(trainer, pl_module, "val")

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero:
            self._log_iou_table(trainer, pl_module, "test")

    @staticmethod
    def _log_iou_table(trainer: pl.Trainer, pl_module: pl.LightningModule, split: str) -> None:
        """W&B table (class, IoU in percent, epoch) of the evaluation that just ended."""
        scores = getattr(pl_module, "last_scores", {}).get(split)
        if scores is None or not isinstance(trainer.logger, WandbLogger):
            return
        import wandb

        names = pl_module.label_names  # type: ignore[attr-defined]
        table = wandb.Table(columns=["class", "IoU", "epoch"])
        for name, iou in zip(names, scores["iou"].tolist(), strict=True):
            table.add_data(
                name, None if np.isnan(iou) else round(100 * iou, 2), trainer.current_epoch
            )
        trainer.logger.experiment.log(
            {f"{split}/iou_table": table, "trainer/global_step": trainer.global_step}
        )

    def _log(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        key: str,
        rows: list[dict[str, Any]],
    ) -> None:
        names = list(pl_module.label_names)  # type: ignore[attr-defined]
        for logger in trainer.loggers:  # each logger's folder gets the composites
            log_review(logger, key, rows, names, trainer.global_step)


def review_dir(logger: Logger | None) -> Path | None:
    """The local folder of a logger's composite review PNGs: ``<W&B run dir>/review`` (online or
    offline, beside ``files/``: not uploaded), else ``<log_dir>/review``; None without one."""
    if isinstance(logger, WandbLogger):
        return Path(logger.experiment.dir).parent / "review"
    log_dir = getattr(logger, "log_dir", None) if logger is not None else None
    return Path(log_dir) / "review" if log_dir else None


def log_review(
    logger: Logger | None, key: str, rows: list[dict[str, Any]], names: list[str], step: int
) -> None:
    """Log review rows under ``key``: composite PNGs on disk for every logger (``review_dir``:
    image | masks with panel titles and a class-colour legend, ``wsss_pl.review.compose``), and
    W&B images with toggleable mask layers (and box layers) or TensorBoard images.

    A row is {"id": str, "image": uint8 [H, W, 3], <mask name>: uint8 [H, W] class ids (or 0/1
    for "error" and "disagreement"), optional "boxes": instance metadata (pixel xyxy "box",
    "label", "class", "score", "phrase")}. ``names`` are the names of label ids 0..K-1.
    """
    from wsss_pl.review import compose, write_composites

    directory = review_dir(logger)
    if directory is not None and rows:
        write_composites(directory, key, rows, names, step)
    id_names = dict(enumerate(names))
    id_names[IGNORE_INDEX] = "ignore"
    mask_keys = [
        k
        for k in dict.fromkeys(k for row in rows for k in row)
        if k not in ("id", "image", "boxes", "notes")
    ]
    if isinstance(logger, WandbLogger):
        import wandb

        rows = _same_size(rows)  # W&B shows one key's images as a grid of one size
        binary = {0: "agree", 1: "disagree"}
        images = [
            wandb.Image(
                row["image"],
                caption=row["id"],
                masks={
                    k: {
                        "mask_data": row[k],
                        "class_labels": binary if k in ("error", "disagreement") else id_names,
                    }
                    for k in mask_keys
                    if row.get(k) is not None
                },
                boxes=_wandb_boxes(row["boxes"], id_names) if "boxes" in row else None,
            )
            for row in rows
        ]
        logger.experiment.log({key: images, "trainer/global_step": step})
    elif isinstance(logger, TensorBoardLogger):
        for row in rows:
            tag = f"{key}/{row['id']}"
            logger.experiment.add_image(tag, compose(row, names), step, dataformats="HWC")


def _same_size(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows of mixed image sizes padded bottom/right to the largest: image grey, class masks
    255 (ignore), 0/1 masks 0; rows already of one size are returned as they are."""
    sizes = {np.asarray(row["image"]).shape[:2] for row in rows}
    if len(sizes) <= 1:
        return rows
    height = max(h for h, _ in sizes)
    width = max(w for _, w in sizes)
    padded = []
    for row in rows:
        h, w = np.asarray(row["image"]).shape[:2]
        out = dict(row)
        image = np.full((height, width, 3), 128, dtype=np.uint8)
        image[:h, :w] = row["image"]
        out["image"] = image
        for key, value in row.items():
            if key in ("id", "image", "boxes", "notes") or value is None:
                continue
            fill = 0 if key in ("error", "disagreement") else IGNORE_INDEX
            mask = np.full((height, width), fill, dtype=np.uint8)
            mask[:h, :w] = value
            out[key] = mask
        padded.append(out)
    return padded


def _wandb_boxes(instances: list[dict[str, Any]], names: dict[int, str]) -> dict[str, Any]:
    """W&B box layer of a pseudo-label's detections: pixel xyxy boxes captioned 'class score'."""
    box_data = [
        {
            "position": dict(zip(("minX", "minY", "maxX", "maxY"), inst["box"], strict=True)),
            "domain": "pixel",
            "class_id": int(inst["label"]),
            "box_caption": f"{inst['class']} {inst['score']:.2f}"
            + (f" ({inst['phrase']})" if inst["phrase"] != inst["class"] else ""),
            "scores": {"score": float(inst["score"])},
        }
        for inst in instances
    ]
    return {"detections": {"box_data": box_data, "class_labels": names}}


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
