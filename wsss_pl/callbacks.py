"""Review of labels and predictions (W&B masks, or composite PNGs for other loggers) and writers.

Only global rank 0 logs or writes review files; predictions are written by the rank that made them.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter, Callback
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from PIL import Image

from wsss_pl.classes import IGNORE_INDEX, voc_palette
from wsss_pl.io import write_label

log = logging.getLogger(__name__)

_PALETTE = np.array(voc_palette(), dtype=np.uint8).reshape(256, 3)


def colorize(label: np.ndarray) -> np.ndarray:
    """uint8 [H, W] class ids -> uint8 [H, W, 3] VOC colours."""
    return _PALETTE[label]


def disagreement(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """uint8 [H, W]: 1 where two label maps differ (ignore pixels of either excluded), else 0."""
    valid = (a != IGNORE_INDEX) & (b != IGNORE_INDEX)
    return ((a != b) & valid).astype(np.uint8)


class ReviewCallback(Callback):
    """Shows where training labels, ground truth and predictions differ.

    Every ``every_n_epochs`` epochs: the first ``num_val_samples`` validation images of rank 0
    with ground-truth, prediction and error masks; the first ``num_train_samples`` images of the
    epoch's first training batch (after augmentation) with the training label (the pseudo-label)
    and ground truth masks and their disagreement; and a per-class IoU table. With W&B the masks
    are ``wandb.Image`` mask layers with class names, toggled in the UI.
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
    def _rows(
        pl_module: pl.LightningModule,
        batch: dict[str, Any],
        count: int,
        masks: dict[str, torch.Tensor],
        crop_to_size: bool,
    ) -> list[dict[str, Any]]:
        """Numpy rows (id, uint8 HWC image, uint8 HW masks) of the first ``count`` samples.

        Evaluation batches are padded: ``crop_to_size`` cuts each back to its original size.
        """
        augment = pl_module.trainer.datamodule.augment  # type: ignore[attr-defined]
        images = augment.denormalize(batch["image"][:count]).permute(0, 2, 3, 1).cpu().numpy()
        rows = []
        for i in range(images.shape[0]):
            height, width = batch["size"][i].tolist() if crop_to_size else images.shape[1:3]
            crop = (slice(0, height), slice(0, width))
            row = {"id": batch["id"][i], "image": images[i][crop]}
            row.update({k: m[i][crop].to(torch.uint8).cpu().numpy() for k, m in masks.items()})
            rows.append(row)
        return rows

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
        rows = self._rows(
            pl_module,
            batch,
            self.num_train_samples,
            {"training_label": batch["target"], "ground_truth": batch["gt"]},
            crop_to_size=False,
        )
        for row in rows:
            row["disagreement"] = disagreement(row["training_label"], row["ground_truth"])
        self._log(trainer, pl_module, "train/labels", rows)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Freshly made pseudo-labels with their boxes (class and score) against ground truth."""
        labels = getattr(trainer.datamodule, "train_labels", None)  # type: ignore[attr-defined]
        recent = getattr(labels, "recent", None)
        if not recent:
            return
        if self._active(trainer):
            rows = []
            for item in recent:
                row = {"id": item["id"], "image": item["image"].permute(1, 2, 0).numpy()}
                row["pseudo_label"] = item["label"].numpy()
                if item["gt"] is not None:
                    row["ground_truth"] = item["gt"].numpy()
                    row["disagreement"] = disagreement(row["pseudo_label"], row["ground_truth"])
                row["boxes"] = item["metadata"]["instances"]
                rows.append(row)
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
        rows = self._rows(
            pl_module,
            batch,
            missing,
            {"ground_truth": batch["gt"], "prediction": outputs},
            crop_to_size=True,
        )
        for row in rows:
            row["error"] = disagreement(row["prediction"], row["ground_truth"])
        self._val_rows.extend(rows)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._active(trainer):
            return
        if self._val_rows:
            self._log(trainer, pl_module, "val/predictions", self._val_rows)
        scores = getattr(pl_module, "last_scores", {}).get("val")
        if scores is not None and isinstance(trainer.logger, WandbLogger):
            import wandb

            names = pl_module.label_names  # type: ignore[attr-defined]
            table = wandb.Table(columns=["class", "IoU", "epoch"])
            for name, iou in zip(names, scores["iou"].tolist(), strict=True):
                table.add_data(
                    name, None if np.isnan(iou) else round(100 * iou, 2), trainer.current_epoch
                )
            trainer.logger.experiment.log(
                {"val/iou_table": table, "trainer/global_step": trainer.global_step}
            )

    def _log(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        key: str,
        rows: list[dict[str, Any]],
    ) -> None:
        names = dict(enumerate(pl_module.label_names))  # type: ignore[attr-defined]
        names[IGNORE_INDEX] = "ignore"
        mask_keys = [
            k
            for k in dict.fromkeys(k for row in rows for k in row)
            if k not in ("id", "image", "boxes")
        ]
        logger = trainer.logger
        if isinstance(logger, WandbLogger):
            import wandb

            binary = {0: "agree", 1: "disagree"}
            images = [
                wandb.Image(
                    row["image"],
                    caption=row["id"],
                    masks={
                        k: {
                            "mask_data": row[k],
                            "class_labels": binary if k in ("error", "disagreement") else names,
                        }
                        for k in mask_keys
                        if k in row
                    },
                    boxes=_wandb_boxes(row["boxes"], names) if "boxes" in row else None,
                )
                for row in rows
            ]
            logger.experiment.log({key: images, "trainer/global_step": trainer.global_step})
            return
        # Other loggers: one composite per sample, image | masks in VOC colours.
        for row in rows:
            panels = [row["image"]] + [
                colorize(row[k] * (255 if k in ("error", "disagreement") else 1)) for k in mask_keys
            ]
            composite = np.concatenate(panels, axis=1)
            tag = f"{key}/{row['id']}"
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image(tag, composite, trainer.global_step, dataformats="HWC")
            elif logger is not None and logger.log_dir:
                path = (
                    Path(logger.log_dir)
                    / "review"
                    / f"{key.replace('/', '_')}_step{trainer.global_step}_{row['id']}.png"
                )
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(composite).save(path)


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
