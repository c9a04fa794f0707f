"""Confusion-matrix metric against an independent numpy computation, NaN rules, DDP reduction."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from wsss_pl.metrics import (
    ConfusionMatrix,
    confusion_from_labels,
    count_labels,
    iou_from_confusion,
    scores_from_confusion,
)

Batch = tuple[torch.Tensor, torch.Tensor]


def _numpy_confusion(batches: list[Batch], num_classes: int, ignore: int = 255) -> np.ndarray:
    """int64 [C, C + 1]: column C holds target pixels predicted as ignore."""
    cm = np.zeros((num_classes, num_classes + 1), dtype=np.int64)
    for pred, target in batches:
        p, t = pred.numpy().ravel().astype(np.int64), target.numpy().ravel().astype(np.int64)
        keep = t != ignore
        np.add.at(cm, (t[keep], np.where(p[keep] == ignore, num_classes, p[keep])), 1)
    return cm


def _numpy_scores(cm: np.ndarray) -> dict[str, np.ndarray]:
    square = cm[:, :-1]
    tp = np.diag(square).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = tp / (square.sum(0) + cm.sum(1) - tp)  # abstentions are false negatives
        recall = tp / cm.sum(1)
    return {
        "iou": iou,
        "miou": np.nanmean(iou),
        "pixel_acc": tp.sum() / cm.sum(),
        "mean_acc": np.nanmean(recall),
    }


def _random_batch(
    gen: torch.Generator, num_classes: int, b: int, h: int, w: int, abstain: float = 0.0
) -> Batch:
    """Target with 20% ignore pixels; a prediction right more often than chance, abstaining
    (255, as a pseudo-label may) on a fraction ``abstain`` of pixels."""
    target = torch.randint(0, num_classes, (b, h, w), generator=gen, dtype=torch.int64)
    target[torch.rand(b, h, w, generator=gen) < 0.2] = 255
    pred = torch.where(
        torch.rand(b, h, w, generator=gen) < 0.5,
        target.clamp(max=num_classes - 1),
        torch.randint(0, num_classes, (b, h, w), generator=gen),
    )
    pred[torch.rand(b, h, w, generator=gen) < abstain] = 255
    return pred, target.to(torch.uint8)


def test_matches_numpy_on_random_data() -> None:
    gen = torch.Generator().manual_seed(0)
    num_classes = 6
    batches = [
        _random_batch(gen, num_classes, 2, 17, 23),
        _random_batch(gen, num_classes, 3, 9, 5, abstain=0.1),
    ]
    metric = ConfusionMatrix(num_classes=num_classes)
    for pred, target in batches:
        metric.update(pred, target)
    expected_cm = _numpy_confusion(batches, num_classes)
    assert metric.confmat.dtype == torch.int64
    assert np.array_equal(metric.confmat.numpy(), expected_cm[:, :-1])
    assert np.array_equal(metric.pred_ignored.numpy(), expected_cm[:, -1])
    assert int(metric.pred_ignored.sum()) > 0
    counted = int(metric.confmat.sum() + metric.pred_ignored.sum())
    assert counted == sum(int((t != 255).sum()) for _, t in batches)

    scores = metric.compute()
    expected = _numpy_scores(expected_cm)
    for key in ("iou", "miou", "pixel_acc", "mean_acc"):
        np.testing.assert_allclose(scores[key].numpy(), expected[key], rtol=1e-12)


def test_logits_are_argmaxed() -> None:
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 4, 8, 8, generator=gen)
    target = torch.randint(0, 4, (2, 8, 8), generator=gen)
    from_logits = ConfusionMatrix(num_classes=4)
    from_logits.update(logits, target)
    from_ids = ConfusionMatrix(num_classes=4)
    from_ids.update(logits.argmax(1), target)
    assert torch.equal(from_logits.confmat, from_ids.confmat)
    with pytest.raises(ValueError, match=r"\[B, 4, H, W\]"):
        from_logits.update(torch.randn(2, 3, 8, 8), target)


def test_nan_for_absent_classes() -> None:
    # class 0 right, class 1 only predicted (IoU 0), class 2 nowhere (NaN), class 3 missed
    target = torch.tensor([[0, 0, 3, 3, 255]])
    pred = torch.tensor([[0, 1, 3, 0, 2]])
    cm = confusion_from_labels(pred, target, num_classes=4)
    iou = iou_from_confusion(cm)
    assert iou[0] == pytest.approx(1 / 3)
    assert iou[1] == 0.0
    assert torch.isnan(iou[2])
    assert iou[3] == pytest.approx(1 / 2)
    scores = scores_from_confusion(cm)
    assert float(scores["miou"]) == pytest.approx((1 / 3 + 0 + 1 / 2) / 3)
    assert float(scores["pixel_acc"]) == pytest.approx(2 / 4)
    assert float(scores["mean_acc"]) == pytest.approx((1 / 2 + 1 / 2) / 2)  # classes 0 and 3
    with pytest.warns(UserWarning, match="before the ``update``"):
        empty = ConfusionMatrix(num_classes=3).compute()
    assert torch.isnan(empty["iou"]).all() and torch.isnan(empty["miou"])


def test_out_of_range_labels_fail_loudly() -> None:
    metric = ConfusionMatrix(num_classes=21)
    coco_like = torch.tensor([[0, 5, 40, 255]], dtype=torch.uint8)
    with pytest.raises(ValueError, match=r"target contains label ids \[40\].*21-class"):
        metric.update(torch.zeros(1, 4, dtype=torch.int64), coco_like)
    with pytest.raises(ValueError, match=r"prediction contains label ids \[30\]"):
        metric.update(torch.tensor([[0, 30, 1, 2]]), coco_like.clamp(max=20))
    # an abstaining prediction fits count_labels but not a [C, C] matrix
    with pytest.raises(ValueError, match=r"prediction contains label ids \[255\].*count_labels"):
        confusion_from_labels(torch.tensor([255]), torch.tensor([1]), num_classes=21)
    with pytest.raises(ValueError, match="shape"):
        confusion_from_labels(torch.zeros(2, 3, dtype=torch.long), torch.zeros(3, 2), 21)
    assert int(metric.confmat.sum()) == 0  # a failed update counts nothing


def test_abstaining_prediction_is_a_miss() -> None:
    # target class 1 on 4 pixels: 2 right, 2 left as ignore by the pseudo-label
    target = torch.tensor([[1, 1, 1, 1, 0, 255]])
    pred = torch.tensor([[1, 1, 255, 255, 0, 255]])
    confmat, pred_ignored = count_labels(pred, target, num_classes=2)
    assert confmat.tolist() == [[1, 0], [0, 2]]
    assert pred_ignored.tolist() == [0, 2]
    scores = scores_from_confusion(confmat, pred_ignored)
    assert scores["iou"].tolist() == [1.0, 0.5]
    assert float(scores["pixel_acc"]) == pytest.approx(3 / 5)
    # ignore_index inside [0, C) masks targets only; predictions of that class stay a class
    confmat, pred_ignored = count_labels(pred.clamp(max=1), target.clamp(max=1), 2, ignore_index=0)
    assert confmat.tolist() == [[0, 0], [0, 5]] and pred_ignored.tolist() == [0, 0]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _ddp_worker(
    rank: int, world_size: int, port: int, shards: list[dict[str, list[Batch]]], out: str
) -> None:
    torch.set_num_threads(1)
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        results = {}
        for name, (num_classes, batches) in shards[rank].items():
            metric = ConfusionMatrix(num_classes=num_classes)
            for pred, target in batches:
                metric.update(pred, target)
            local_miou = scores_from_confusion(metric.confmat, metric.pred_ignored)["miou"]
            scores = metric.compute()
            with metric.sync_context():
                synced = torch.cat([metric.confmat, metric.pred_ignored[:, None]], dim=1)
            results[name] = {"scores": scores, "counts": synced, "local_miou": local_miou}
        torch.save(results, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_ddp_reduces_the_confusion_matrix(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(2)
    random_shards = [
        [_random_batch(gen, 5, 2, 11, 13)],
        [_random_batch(gen, 5, 1, 7, 9), _random_batch(gen, 5, 3, 4, 6, abstain=0.2)],
    ]
    # rank 0: all background, all right (mIoU 1); rank 1: all class 1, half missed (mIoU 0.25)
    ones = torch.ones(1, 2, 2, dtype=torch.int64)
    constructed_shards = [
        [(0 * ones, 0 * ones)],
        [(torch.tensor([[[1, 1], [0, 0]]]), ones)],
    ]
    shards = [
        {"random": (5, random_shards[r]), "constructed": (2, constructed_shards[r])}
        for r in range(2)
    ]
    mp.spawn(_ddp_worker, args=(2, _free_port(), shards, str(tmp_path)), nprocs=2, join=True)
    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]

    for name, num_classes in (("random", 5), ("constructed", 2)):
        union = [batch for r in range(2) for batch in shards[r][name][1]]
        expected_cm = _numpy_confusion(union, num_classes)
        expected = _numpy_scores(expected_cm)
        for rank_result in results:
            got = rank_result[name]
            assert np.array_equal(got["counts"].numpy(), expected_cm)
            assert float(got["scores"]["miou"]) == pytest.approx(float(expected["miou"]), abs=1e-12)
            np.testing.assert_allclose(got["scores"]["iou"].numpy(), expected["iou"], rtol=1e-12)

    constructed = [r["constructed"] for r in results]
    assert [float(r["local_miou"]) for r in constructed] == pytest.approx([1.0, 0.25])
    mean_of_ranks = (1.0 + 0.25) / 2
    union_miou = float(constructed[0]["scores"]["miou"])
    assert union_miou == pytest.approx((4 / 6 + 2 / 4) / 2)  # confmat [[4, 0], [2, 2]]
    assert abs(union_miou - mean_of_ranks) > 0.01
