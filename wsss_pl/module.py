"""The LightningModule: DeepLab-v2 trained with cross-entropy (ignore 255), mIoU per split."""

from __future__ import annotations

import logging
import math
from typing import Any, Literal

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from jsonargparse.typing import PositiveFloat
from lightning.pytorch.cli import OptimizerCallable
from torch import nn
from torch.optim import SGD
from torch.optim.lr_scheduler import LambdaLR
from torchmetrics import MeanMetric, SumMetric

from wsss_pl.classes import IGNORE_INDEX
from wsss_pl.errors import WsssError
from wsss_pl.metrics import ConfusionMatrix
from wsss_pl.models.crf import CRFParams, dense_crf
from wsss_pl.models.inference import predict_logits, predict_msc_max
from wsss_pl.models.loss import step_loss
from wsss_pl.models.msc import check_scales, msc_forward

log = logging.getLogger(__name__)


def _default_optimizer(params: Any) -> torch.optim.Optimizer:
    """The DeepLab-v2 baseline: SGD, lr 2.5e-4, momentum 0.9, weight decay 5e-4."""
    return SGD(params, lr=2.5e-4, momentum=0.9, weight_decay=5e-4)


# Logged name -> batch key of the per-batch counts (summed over the epoch and all ranks).
COUNTERS = {
    "data/skipped_samples": "num_skipped",
    "labelling/images": "num_labelled",
    "labelling/unmatched_boxes": "num_unmatched_boxes",
    "labelling/missing_classes": "num_missing_classes",
}


def _counter_key(name: str) -> str:
    return name.replace("/", "__")  # module names may not contain "."


def _uncounted_to_ignore(batch: dict[str, Any]) -> torch.Tensor:
    """Ground truth [B, H, W] with DDP padding repeats set to ignore, so each image counts once."""
    gt = batch["gt"]
    if bool(batch["padding"].any()):
        gt = gt.clone()
        gt[batch["padding"]] = IGNORE_INDEX
    return gt


class SegmentationModule(pl.LightningModule):
    """Trains a segmentation network on the batch's ``target`` and evaluates on its ``gt``.

    Args:
        net: the network (``wsss_pl.models.DeepLabV2``): float [B,3,H,W] -> logits [B,K,h,w].
            If it has ``param_groups(lr, weight_decay)``, its groups get ``lr * lr_mult``
            (DeepLab-v2: backbone 1x, classifier weights 10x, biases 20x).
        class_names: foreground class names (linked from the data module by the CLI).
        optimizer: a callable that builds the optimiser from parameters or parameter groups.
        poly_power: learning rate = base * (1 - step / max_steps) ** poly_power, per step.
        max_steps: length of the poly schedule; default: the trainer's estimated total steps.
        test_scales, test_flip: multi-scale / flip inference for ``test`` and ``predict``.
        msc_scales: DeepLab-v2's multi-scale training (paper: [1.0, 0.75, 0.5]): a loss on each
            scale's logits and on their max fusion, at logit resolution with labels shrunk by
            nearest neighbour (``wsss_pl.models.msc``). None: one scale, the loss on logits
            upsampled to the label size. Validation stays single-scale.
        test_crf: refine ``test``/``predict`` probabilities (after ``test_scales``/``test_flip``)
            with a dense CRF on the original image (CPU, pydensecrf2), as DeepLab-v2 does.
        crf: the CRF's parameters (default: DeepLab-v2's published ones).
        test_fusion: how ``test_scales`` combine: ``mean_prob`` (softmax per scale and flip,
            averaged at image size) or ``max_logit`` (DeepLab-v2's MSC test: logits max-fused at
            the scale-1 logit size, then upsampled; needs 1.0 in ``test_scales``).
        channels_last: keep the net's conv weights and its inputs in channels_last memory format
            (faster convolutions on recent GPUs with bf16-mixed; same math, fp32 by default off).
        loss_groups: the step's images split into this many groups by position, the loss a
            mean over each group's valid pixels, averaged over groups (``wsss_pl.models.loss``):
            2 is deeplab-pytorch's ``ITER_SIZE`` 2 x 5 images (the paper's configs), 1 one mean
            over all pixels of the step. With ``data.global_batch_size`` the groups and their
            pixel counts span all ranks; otherwise each rank's batch alone.
    """

    def __init__(
        self,
        net: nn.Module,
        class_names: list[str] | None = None,
        optimizer: OptimizerCallable = _default_optimizer,
        poly_power: float = 0.9,
        max_steps: int | None = None,
        test_scales: list[float] | None = None,
        test_flip: bool = False,
        msc_scales: list[PositiveFloat] | None = None,
        test_crf: bool = False,
        crf: CRFParams = CRFParams(),  # noqa: B008 (frozen dataclass)
        test_fusion: Literal["mean_prob", "max_logit"] = "mean_prob",
        channels_last: bool = False,
        loss_groups: int = 1,
    ) -> None:
        super().__init__()
        if isinstance(crf, dict):  # from a checkpoint's hyper_parameters (load_from_checkpoint)
            crf = CRFParams(**crf)
        self.save_hyperparameters(ignore=["net", "optimizer", "crf"])
        self.hparams["crf"] = crf.as_dict()  # plain values: checkpoints load with weights_only
        self.net = net
        self.optimizer_factory = optimizer
        self.class_names = list(class_names) if class_names is not None else None
        self.poly_power = poly_power
        self.max_steps = max_steps
        self.test_scales = list(test_scales) if test_scales else [1.0]
        self.test_flip = test_flip
        self.msc_scales = check_scales(msc_scales) if msc_scales else None
        self.test_crf = test_crf
        if test_fusion not in ("mean_prob", "max_logit"):
            raise ValueError(f"test_fusion must be mean_prob or max_logit, got {test_fusion!r}")
        if test_fusion == "max_logit":
            check_scales(self.test_scales)
        self.test_fusion = test_fusion
        self.crf = crf
        self.channels_last = channels_last
        if isinstance(loss_groups, bool) or not isinstance(loss_groups, int) or loss_groups < 1:
            raise ValueError(f"model.loss_groups must be an integer >= 1, got {loss_groups!r}")
        self.loss_groups = loss_groups
        if channels_last:
            self.net.to(memory_format=torch.channels_last)
        num_classes = len(self.class_names) + 1 if self.class_names is not None else None
        self.num_classes = num_classes or self._net_classes()
        self.val_metric = ConfusionMatrix(self.num_classes, IGNORE_INDEX)
        self.val_loss = MeanMetric()
        self.test_metric = ConfusionMatrix(self.num_classes, IGNORE_INDEX)
        # Quality of the training labels themselves (pseudo-label vs ground truth, when known).
        self.train_label_metric = ConfusionMatrix(self.num_classes, IGNORE_INDEX)
        self.counters = nn.ModuleDict({_counter_key(name): SumMetric() for name in COUNTERS})

    def _net_classes(self) -> int:
        count = getattr(self.net, "num_classes", None)
        if count is None:
            raise ValueError("class_names not given and the net has no num_classes attribute")
        return int(count)

    def setup(self, stage: str) -> None:
        net_classes = getattr(self.net, "num_classes", self.num_classes)
        if net_classes != self.num_classes:
            raise ValueError(
                f"model.net.init_args.num_classes is {net_classes} but the dataset has "
                f"{self.num_classes} label ids (background + {self.num_classes - 1} classes); "
                "set them equal in the config"
            )

    def on_fit_start(self) -> None:
        # A net that says training from its random init is a mistake (DeepLabV2 with freeze_bn
        # and no init weights): warned here, where training really starts from it.
        warning = getattr(self.net, "random_init_warning", None)
        message = warning() if callable(warning) else None
        if message and self.trainer.ckpt_path is None and self.trainer.is_global_zero:
            log.warning(message)

    @property
    def label_names(self) -> list[str]:
        """Names of label ids 0..K-1 (background first)."""
        names = self.class_names or [f"class_{i}" for i in range(1, self.num_classes)]
        return ["background", *names]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """float [B,3,H,W] normalised -> logits [B,K,H,W] upsampled to the input size."""
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        logits = self.net(images)
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        target = batch["target"].long()
        if self.msc_scales is not None:
            outputs = msc_forward(self.net, batch["image"], self.msc_scales)
        else:
            outputs = [self(batch["image"])]  # at label size
        loss, value = self._step_loss(outputs, target, batch)
        self.log("train/loss", value, prog_bar=True, batch_size=target.shape[0])
        # Counted, never silent: unreadable samples skipped, and the online labeler's work.
        for name, key in COUNTERS.items():
            self.counters[_counter_key(name)].update(float(batch[key]))
        if bool(batch["has_gt"].any()):
            self.train_label_metric.update(
                batch["target"][batch["has_gt"]], batch["gt"][batch["has_gt"]]
            )
        return loss

    def _step_loss(
        self, outputs: list[torch.Tensor], target: torch.Tensor, batch: dict[str, Any]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss to back-propagate, the step's loss value): see ``wsss_pl.models.loss``. With the
        data module's global batch (``batch_plan``) the normalisation spans all ranks."""
        trainer = self._trainer
        plan = getattr(getattr(trainer, "datamodule", None), "batch_plan", None)
        if plan is not None and "batch_position" in batch and trainer is not None:
            world = int(plan["world_size"])
            return step_loss(
                outputs, target, batch["batch_position"], int(plan["global_batch_size"]),
                self.loss_groups, world,
                (lambda t: trainer.strategy.reduce(t, reduce_op="sum")) if world > 1 else None,
            )  # fmt: skip
        positions = torch.arange(target.shape[0], device=target.device)
        return step_loss(outputs, target, positions, target.shape[0], self.loss_groups)

    def on_train_epoch_end(self) -> None:
        # Metrics reduce across ranks in compute(), called on every rank in the same order.
        # (self.log(sync_dist=True) would sync lazily, e.g. from rank 0's progress bar only.)
        if int(self.train_label_metric.confmat.sum()) > 0 or self.trainer.world_size > 1:
            self._log_scores("train_labels", self.train_label_metric.compute())
        self.train_label_metric.reset()
        self.log_dict({name: self.counters[_counter_key(name)].compute() for name in COUNTERS})
        for counter in self.counters.values():
            counter.reset()

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        logits = self(batch["image"])
        gt = _uncounted_to_ignore(batch)
        # Pixel-weighted mean over the epoch and all ranks; a batch without valid pixels adds 0.
        valid = (gt != IGNORE_INDEX).sum()
        loss_sum = F.cross_entropy(logits, gt.long(), ignore_index=IGNORE_INDEX, reduction="sum")
        self.val_loss.update(loss_sum / valid.clamp_min(1), weight=valid)
        preds = logits.argmax(1)
        self.val_metric.update(preds, gt)
        return preds

    def on_validation_epoch_end(self) -> None:
        self._log_scores("val", self.val_metric.compute())
        self.log("val/loss", self.val_loss.compute())
        self.val_metric.reset()
        self.val_loss.reset()

    def _predict(self, batch: dict[str, Any]) -> torch.Tensor:
        if self.test_fusion == "max_logit":
            probs = predict_msc_max(self.net, batch["image"], self.test_scales, self.test_flip)
        else:
            probs = predict_logits(self.net, batch["image"], self.test_scales, self.test_flip)
        if self.test_crf:
            probs = self._crf(batch, probs)
        return probs.argmax(1)

    def _original_images(self, batch: dict[str, Any]) -> torch.Tensor:
        """uint8 [B, 3, H, W] images as decoded: ``image_uint8`` when the batch has it, else the
        normalised ``image`` mapped back with the data module's own mean/std (exact for uint8)."""
        if "image_uint8" in batch:
            return batch["image_uint8"]
        augment = getattr(getattr(self._trainer, "datamodule", None), "augment", None)
        if augment is None or not hasattr(augment, "denormalize"):
            raise WsssError(
                "model.test_crf needs the original images: the batch has no 'image_uint8' and "
                "the trainer has no data module with augment.denormalize; use "
                "wsss_pl's data module or set model.test_crf: false"
            )
        return augment.denormalize(batch["image"])

    def _crf(self, batch: dict[str, Any], probs: torch.Tensor) -> torch.Tensor:
        """Dense CRF per image on its unpadded region (CPU); probs float [B, C, H, W]."""
        images = self._original_images(batch).cpu()
        refined = probs.detach().float().cpu().clone()
        for i, (height, width) in enumerate(batch["size"].tolist()):
            image = images[i, :, :height, :width].permute(1, 2, 0).contiguous().numpy()
            marginals = dense_crf(image, refined[i, :, :height, :width].numpy(), self.crf)
            refined[i, :, :height, :width] = torch.from_numpy(marginals)
        return refined.to(probs.device)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        preds = self._predict(batch)
        self.test_metric.update(preds, _uncounted_to_ignore(batch))
        return preds

    def on_test_epoch_end(self) -> None:
        self._log_scores("test", self.test_metric.compute())
        self.test_metric.reset()

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        preds = self._predict(batch).to(torch.uint8)
        return {"id": batch["id"], "size": batch["size"], "pred": preds}

    def _log_scores(self, split: str, scores: dict[str, torch.Tensor]) -> None:
        """Log mIoU, pixel accuracy and per-class IoU by name, in percent (``last_scores`` keeps
        the fractions); the metric already reduced the confusion matrix across ranks."""
        self.last_scores = getattr(self, "last_scores", {})
        self.last_scores[split] = {k: v.detach().cpu() for k, v in scores.items()}
        # Logged in percent, as papers report them (progress bar, tables, checkpoint names).
        values = {
            f"{split}/mIoU": 100 * scores["miou"],
            f"{split}/pixel_acc": 100 * scores["pixel_acc"],
        }
        for name, iou in zip(self.label_names, scores["iou"].tolist(), strict=True):
            if not math.isnan(iou):
                values[f"{split}/IoU/{name}"] = torch.tensor(100 * iou)
        if split == "val":  # shown in the terminal's progress bar after each validation
            self.log(f"{split}/mIoU", values.pop(f"{split}/mIoU"), prog_bar=True, sync_dist=False)
        self.log_dict(values, sync_dist=False)  # already reduced across ranks by compute()

    def configure_callbacks(self) -> list[pl.Callback]:
        # Background pseudo-label writes are flushed before epoch ends and checkpoints.
        from wsss_pl.labeling.storage.writer import FlushLabelWrites

        return [FlushLabelWrites()]

    def configure_optimizers(self) -> dict[str, Any]:
        base_params = self.net.param_groups if hasattr(self.net, "param_groups") else None
        if base_params is not None:
            probe = self.optimizer_factory([torch.zeros(1, requires_grad=True)])
            lr, weight_decay = probe.defaults["lr"], probe.defaults.get("weight_decay", 0.0)
            optimizer = self.optimizer_factory(self.net.param_groups(lr, weight_decay))
        else:
            optimizer = self.optimizer_factory([p for p in self.parameters() if p.requires_grad])
        max_steps = self.max_steps or int(self.trainer.estimated_stepping_batches)
        power = self.poly_power

        def poly(step: int) -> float:
            return max(1.0 - step / max(max_steps, 1), 0.0) ** power

        scheduler = LambdaLR(optimizer, poly)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }
