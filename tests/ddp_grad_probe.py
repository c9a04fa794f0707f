"""Helper of tests/test_global_batch.py (not a test module): two optimiser steps of the real
SegmentationModule + WSSSDataModule (global batch 10, MSC loss, loss_groups 2, the paper's
augmentation) with a tiny net under Lightning DDP (gloo, CPU), recording each step's gradient
after DDP's all-reduce and the ids every rank trained on.

    python tests/ddp_grad_probe.py DATA_ROOT OUT_DIR WORLD_SIZE

Writes ``OUT_DIR/grads_w{W}.pt`` (rank 0: one flat float64 gradient per step) and
``OUT_DIR/ids_w{W}_r{rank}.json`` (per step: the rank's ids and their global batch positions).
Lightning starts ranks 1.. by re-running this command.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn

from wsss_pl.classes import VOC
from wsss_pl.data.augment import PAPER_SCALES
from wsss_pl.data.datamodule import WSSSDataModule
from wsss_pl.data.label_sources import GroundTruthLabels
from wsss_pl.data.synthetic import SyntheticVOC
from wsss_pl.module import SegmentationModule

NUM_TRAIN = 13  # 2 steps of 10: the second wraps around to the epoch's first images
IMAGE_SIZE = (32, 40)


class TinyNet(nn.Module):
    """float [B, 3, H, W] -> logits [B, 21, ceil(H/2), ceil(W/2)]."""

    num_classes = 21

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(8, 21, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class Recorder(pl.Callback):
    def __init__(self, out: Path, world: int) -> None:
        self.out, self.world = out, world
        self.grads: list[torch.Tensor] = []
        self.batches: list[dict[str, Any]] = []

    def on_train_batch_start(
        self, trainer: pl.Trainer, module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self.batches.append(
            {"ids": list(batch["id"]), "positions": batch["batch_position"].tolist()}
        )

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, module: pl.LightningModule, optimizer: Any
    ) -> None:
        grads = [
            p.grad.detach().double().flatten() for p in module.parameters() if p.grad is not None
        ]
        self.grads.append(torch.cat(grads))

    def on_train_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        rank = trainer.global_rank
        (self.out / f"ids_w{self.world}_r{rank}.json").write_text(json.dumps(self.batches))
        if rank == 0:
            torch.save(self.grads, self.out / f"grads_w{self.world}.pt")


def main(data_root: str, out: str, world: int) -> None:
    pl.seed_everything(0, verbose=False)
    source = SyntheticVOC(data_root, num_train=NUM_TRAIN, num_val=1, image_size=IMAGE_SIZE)
    data = WSSSDataModule(
        source, GroundTruthLabels(), batch_size=None, global_batch_size=10, num_workers=0,
        crop_size=21, scales=list(PAPER_SCALES), pin_memory=False,
    )  # fmt: skip
    module = SegmentationModule(
        TinyNet(), class_names=list(VOC.class_names), msc_scales=[1.0, 0.75, 0.5], loss_groups=2,
        optimizer=lambda params: torch.optim.SGD(params, lr=0.5, momentum=0.9),
    )  # fmt: skip
    trainer = pl.Trainer(
        accelerator="cpu", devices=world, strategy="ddp" if world > 1 else "auto", max_steps=2,
        logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
        callbacks=[Recorder(Path(out), world)],
    )  # fmt: skip
    trainer.fit(module, datamodule=data)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
