"""Review of labels and predictions during fit: composite PNGs on disk for every logger and W&B
masks (``ReviewCallback``, ``log_review``). Only global rank 0 logs or writes review files.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import Logger, TensorBoardLogger, WandbLogger

from wsss_pl.classes import IGNORE_INDEX, voc_palette

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
