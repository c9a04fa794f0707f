"""Validation cadence that works for any dataset size: every run validates and checkpoints at its end.

Step-based configs (``val_check_interval: 2000``, ``max_steps: 20000``) break on datasets other
than the one they were written for: Lightning refuses an interval longer than one epoch when it
counts per epoch, never validates when the interval exceeds the whole run, and leaves the last
steps after the final multiple of the interval unvalidated (so the best/last checkpoints miss the
final weights). ``ValidationCadence`` fixes each case and says so in one line.
"""

from __future__ import annotations

import logging
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback

log = logging.getLogger(__name__)


class ValidationCadence(Callback):
    """Makes integer ``val_check_interval`` count global steps and validates after the last step.

    - An integer interval with ``check_val_every_n_epoch`` set counts batches within an epoch, and
      Lightning rejects one longer than the epoch: it is switched to global-step counting.
    - An interval longer than ``max_steps`` is shortened to ``max_steps``.
    - When the last step is not a multiple of the interval, training stops through
      ``trainer.should_stop`` at that step, which makes Lightning validate (and so checkpoint)
      once more before it ends.
    """

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit" or trainer.val_check_interval is None:
            return
        interval = trainer.val_check_interval
        if not isinstance(interval, int) or isinstance(interval, bool):
            return  # a fraction of an epoch: Lightning validates at epoch ends anyway
        if trainer.check_val_every_n_epoch is not None:
            log.warning(
                "val_check_interval %d counts global steps (check_val_every_n_epoch set to null), "
                "so it may exceed the length of one epoch", interval,
            )  # fmt: skip
            trainer.check_val_every_n_epoch = None
        max_steps = trainer.max_steps
        if max_steps is not None and 0 < max_steps < interval:
            log.warning(
                "val_check_interval %d exceeds max_steps %d: validating at step %d instead",
                interval, max_steps, max_steps,
            )  # fmt: skip
            trainer.val_check_interval = max_steps

    def _last_step(self, trainer: pl.Trainer) -> bool:
        if trainer.max_steps is not None and trainer.max_steps > 0:
            return trainer.global_step >= trainer.max_steps
        epoch_loop = trainer.fit_loop.epoch_loop
        max_epochs = trainer.max_epochs
        return (
            max_epochs is not None
            and max_epochs > 0
            and trainer.current_epoch >= max_epochs - 1
            and epoch_loop.batch_progress.is_last_batch
        )

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
        batch_idx: int,
    ) -> None:  # fmt: skip
        interval = trainer.val_check_interval
        if not isinstance(interval, int) or isinstance(interval, bool) or trainer.should_stop:
            return
        if self._last_step(trainer) and trainer.global_step % interval != 0:
            log.info(
                "step %d is the last and not a multiple of val_check_interval %d: validating "
                "once more so the final weights are evaluated and checkpointed",
                trainer.global_step, interval,
            )  # fmt: skip
            trainer.should_stop = True  # Lightning validates when a run stops early
