"""Online labelling with the real wrappers around tiny random Grounding DINO + SAM models."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch

from cli_runner import REPO, run_cli
from wsss_pl.data.collate import collate_samples
from wsss_pl.data.datamodule import WSSSDataModule
from wsss_pl.data.synthetic import SyntheticVOC
from wsss_pl.labeling.label_pass import run_label_pass
from wsss_pl.labeling.labeler import PseudoLabeler
from wsss_pl.labeling.online import OnlinePseudoLabels
from wsss_pl.models import DeepLabV2
from wsss_pl.module import SegmentationModule
from wsss_pl.review_callback import _wandb_boxes

NUM_TRAIN = 10  # not a multiple of the batch size (4): no id may wait for a later epoch


class CountingLabels(OnlinePseudoLabels):
    """Counts every image the labeler is asked to label; optionally fails on the n-th call."""

    def __init__(self, fail_on_call: int | None = None, **kwargs: Any) -> None:
        super().__init__(detector="tiny", sam_checkpoint="tiny", **kwargs)
        self.images_labelled = 0
        self.calls = 0
        self.fail_on_call = fail_on_call

    def build_labeler(self) -> PseudoLabeler:
        labeler = super().build_labeler()
        original = labeler.forward

        def counting_forward(images: list[torch.Tensor], present: list[list[str]]) -> Any:
            self.calls += 1
            if self.calls == self.fail_on_call:
                raise RuntimeError("simulated crash (killed process)")
            self.images_labelled += len(images)
            return original(images, present)

        labeler.forward = counting_forward  # type: ignore[method-assign]
        return labeler


def _data(tmp_path: Path, labels: OnlinePseudoLabels, batch_size: int = 4) -> WSSSDataModule:
    source = SyntheticVOC(
        str(tmp_path / "synthetic"), num_train=NUM_TRAIN, num_val=2, image_size=(48, 64)
    )
    return WSSSDataModule(
        source,
        labels,
        batch_size=batch_size,
        val_batch_size=2,
        num_workers=0,
        crop_size=33,
        pin_memory=False,
    )


class EpochCounts(pl.Callback):
    def __init__(self, labels: CountingLabels) -> None:
        self.labels = labels
        self.per_epoch: list[int] = []
        self._start = 0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = self.labels.images_labelled

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.per_epoch.append(self.labels.images_labelled - self._start)


def _fit(
    tmp_path: Path,
    labels: CountingLabels,
    epochs: int,
    logger: Any = False,
    extra: tuple[pl.Callback, ...] = (),
) -> EpochCounts:
    counts = EpochCounts(labels)
    net = DeepLabV2(num_classes=21, backbone="resnet18", freeze_bn=False)
    trainer = pl.Trainer(
        accelerator="cpu", max_epochs=epochs, logger=logger, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        limit_val_batches=1, callbacks=[counts, *extra],
    )  # fmt: skip
    data = _data(tmp_path, labels)
    trainer.fit(SegmentationModule(net, class_names=data.class_names), datamodule=data)
    return counts


def test_first_epoch_labels_everything_later_epochs_and_runs_nothing(tmp_path: Path) -> None:
    labels = CountingLabels(cache_root=str(tmp_path / "cache"))
    counts = _fit(tmp_path, labels, epochs=2)
    assert counts.per_epoch == [NUM_TRAIN, 0]
    assert labels.cache is not None and len(labels.cache) == NUM_TRAIN
    # A later run with the same settings reads the cache and never builds the models.
    again = CountingLabels(cache_root=str(tmp_path / "cache"))
    assert _fit(tmp_path, again, epochs=1).per_epoch == [0]
    assert again._labeler is None
    # The cached labels are what was trained on: uint8 maps of the image size, metadata beside.
    sample_id = labels.cache.ids()[0]
    label = labels.cache.load(sample_id)
    assert label is not None and label.shape == (48, 64) and label.dtype == torch.uint8
    metadata = labels.cache.load_metadata(sample_id)
    assert metadata is not None and metadata["id"] == sample_id and "instances" in metadata


def test_settings_change_gives_a_new_cache_directory(tmp_path: Path) -> None:
    source = SyntheticVOC(str(tmp_path / "synthetic"), num_train=2, num_val=1, image_size=(48, 64))
    dirs = []
    for threshold in (0.3, 0.3, 0.35):
        labels = OnlinePseudoLabels(
            cache_root=str(tmp_path / "cache"),
            detector="tiny",
            sam_checkpoint="tiny",
            box_threshold=threshold,
        )
        labels.setup(source)
        assert labels.cache is not None
        dirs.append(labels.cache.directory)
    assert dirs[0] == dirs[1] != dirs[2]
    manifest = json.loads((dirs[2] / "manifest.json").read_text())
    assert manifest["settings"]["box_threshold"] == 0.35


def test_label_pass_resumes_after_a_crash(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    crashing = CountingLabels(cache_root=str(tmp_path / "cache"), fail_on_call=2)
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_label_pass(trainer, _data(tmp_path, crashing, batch_size=4))
    assert crashing.cache is not None
    assert len(crashing.cache) == 4  # the first batch survived, complete
    assert not list(crashing.cache.directory.glob(".*.tmp"))
    resumed = CountingLabels(cache_root=str(tmp_path / "cache"))
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    assert run_label_pass(trainer, _data(tmp_path, resumed, batch_size=4)) == 0
    assert resumed.images_labelled == NUM_TRAIN - 4
    assert resumed.cache is not None and len(resumed.cache) == NUM_TRAIN
    out = capsys.readouterr().out
    assert "mIoU" in out and "4 read from the cache" in out


def test_empty_label_set_gives_background_without_running_the_models(tmp_path: Path) -> None:
    labels = CountingLabels(cache_root=str(tmp_path / "cache"))
    data = _data(tmp_path, labels)
    data.prepare_data()
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    batch["labels"][0] = 0  # a background-only image
    labels.label_batch(batch)
    labels.flush()  # writes run in the background until flushed
    height, width = batch["size"][0].tolist()
    assert bool((batch["target"][0, :height, :width] == 0).all())
    assert labels.cache is not None
    assert labels.cache.load_metadata(batch["id"][0])["instances"] == []  # type: ignore[index]


def test_cached_label_of_other_classes_is_made_again(tmp_path: Path) -> None:
    labels = CountingLabels(cache_root=str(tmp_path / "cache"))
    data = _data(tmp_path, labels)
    data.prepare_data()
    data.setup("fit")
    dataset = data.datasets["train"]
    sample = dataset[0]
    assert sample is not None and sample["target"] is None
    batch = collate_samples([sample])
    labels.label_batch(batch)
    labels.flush()  # writes run in the background until flushed
    assert dataset[0]["target"] is not None  # type: ignore[index]  # now a cache hit
    # The image-level labels change (a corrected labels file): the cached label is stale.
    inner = dataset.dataset
    original = inner.image_labels
    inner.image_labels = lambda sample_id: [*original(sample_id), "sheep"]  # type: ignore[method-assign]
    assert dataset[0]["target"] is None


def test_detector_fingerprint_follows_the_weights_not_the_path(tmp_path: Path) -> None:
    from wsss_pl.classes import VOC
    from wsss_pl.labeling.tiny import tiny_grounding_dino

    tiny_grounding_dino(0).save_pretrained(tmp_path / "a")
    shutil.copytree(tmp_path / "a", tmp_path / "moved")
    tiny_grounding_dino(1).save_pretrained(tmp_path / "other")

    def detector_settings(directory: Path) -> Any:
        return OnlinePseudoLabels(detector=str(directory), sam_checkpoint="tiny").settings(VOC)[
            "detector"
        ]

    assert detector_settings(tmp_path / "a") == detector_settings(tmp_path / "moved")
    assert detector_settings(tmp_path / "a") != detector_settings(tmp_path / "other")


def test_review_logs_fresh_pseudo_labels_with_boxes_to_wandb(tmp_path: Path) -> None:
    from lightning.pytorch.loggers import WandbLogger

    from wsss_pl.callbacks import ReviewCallback
    from wsss_pl.classes import VOC

    labels = CountingLabels(cache_root=str(tmp_path / "cache"))
    logger = WandbLogger(project="wsss_pl-test", save_dir=str(tmp_path), offline=True)
    _fit(tmp_path, labels, epochs=1, logger=logger, extra=(ReviewCallback(num_val_samples=1),))
    logger.experiment.finish()
    (run_dir,) = tmp_path.glob("wandb/offline-run-*")
    media = run_dir / "files" / "media" / "images"
    assert list((media / "train").glob("pseudo_labels_*.png"))
    assert list((media / "mask" / "train").glob("pseudo_labels_*.mask.png"))
    # Each reviewed image carries its detections as a W&B boxes2D layer: class and score.
    box_dir = run_dir / "files" / "media" / "metadata" / "boxes2D" / "train"
    boxes = [
        b
        for path in box_dir.glob("pseudo_labels_*.json")
        for b in json.loads(path.read_text())["box_data"]
    ]
    assert boxes, "no box layer logged (or the tiny detector found no box)"
    for box in boxes:
        class_name, score = box["box_caption"].split(" (")[0].rsplit(" ", 1)
        assert class_name in VOC.class_names and box["class_id"] == VOC.label_id(class_name)
        assert 0.3 < float(score) <= 1.0  # above the box threshold


def test_wandb_box_layer_names_class_and_score() -> None:
    instance = {
        "label": 12,
        "class": "dog",
        "phrase": "dog",
        "score": 0.87,
        "box": [1.0, 2.0, 30.0, 40.0],
    }
    assist = {**instance, "label": 13, "class": "horse", "phrase": "saddle"}
    layer = _wandb_boxes([instance, assist], {12: "dog", 13: "horse"})["detections"]
    first, second = layer["box_data"]
    assert first["position"] == {"minX": 1.0, "minY": 2.0, "maxX": 30.0, "maxY": 40.0}
    assert first["box_caption"] == "dog 0.87" and first["domain"] == "pixel"
    assert second["box_caption"] == "horse 0.87 (saddle)" and second["class_id"] == 13


@pytest.mark.slow
def test_label_pass_with_two_ddp_processes_labels_each_id_once(tmp_path: Path) -> None:
    config = str(REPO / "configs" / "demo_online.yaml")
    args = [
        "label", "--config", config, "--trainer.accelerator", "cpu", "--trainer.devices", "2",
        "--trainer.strategy", "ddp", "--trainer.logger", "false",
        "--data.source.init_args.num_train", "10", "--data.source.init_args.num_val", "2",
        "--data.source.init_args.image_size", "[48, 64]", "--data.batch_size", "2", "--data.num_workers", "0",
    ]  # fmt: skip
    result = run_cli(args, tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert "terminate called" not in result.stderr
    assert "pseudo-label quality against ground truth" in result.stdout
    assert "img/s" in result.stderr  # the tqdm bar: images per second and ETA
    (cache_dir,) = [
        p.parent for p in tmp_path.glob("runs/demo_online/pseudo_labels/*/*/manifest.json")
    ]
    reports = [
        json.loads(p.read_text()) for p in sorted((cache_dir / "label_pass").glob("rank*.json"))
    ]
    assert len(reports) == 2
    first, second = (set(r["labelled"]) for r in reports)
    ids = (
        (tmp_path / "data/synthetic_voc/VOC2012/ImageSets/Segmentation/train.txt")
        .read_text()
        .split()
    )
    assert first.isdisjoint(second) and first | second == set(ids)
    assert sorted(p.stem for p in cache_dir.glob("*.png")) == sorted(ids)
    assert not list(cache_dir.rglob("*.tmp"))
    # A second pass finds everything cached.
    again = run_cli(args, tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    reports = [
        json.loads(p.read_text()) for p in sorted((cache_dir / "label_pass").glob("rank*.json"))
    ]
    assert [r["labelled"] for r in reports] == [[], []]
    assert sum(r["cached"] for r in reports) == len(ids)


def _labeler(policy: str) -> PseudoLabeler:
    from wsss_pl.classes import VOC
    from wsss_pl.labeling.tiny import tiny_detector, tiny_segmenter

    # box_threshold 1.0: the first detection finds nothing, so every prompted class is missing.
    return PseudoLabeler(
        tiny_detector(box_threshold=1.0, text_threshold=0.0), tiny_segmenter(), VOC,
        missing_class_policy=policy, retry_box_threshold=0.0,  # type: ignore[arg-type]
    )  # fmt: skip


def test_missing_class_policies() -> None:
    torch.manual_seed(0)
    images = [torch.randint(0, 256, (3, 40, 56), dtype=torch.uint8)]
    (left,) = _labeler("leave")(images, [["cat", "dog"]])
    assert left.missing_classes == ["cat", "dog"] and left.metadata["instances"] == []
    assert bool((left.label == 0).all())
    (ignored,) = _labeler("ignore_background")(images, [["cat", "dog"]])
    assert bool((ignored.label == 255).all())  # the missed objects hide somewhere in it
    (retried,) = _labeler("retry")(images, [["cat", "dog"]])
    instances = retried.metadata["instances"]
    assert instances, "the retry at threshold 0 must find boxes"
    assert {i["class"] for i in instances} <= {"dog", "cat"}
    assert set(retried.missing_classes) == {"dog", "cat"} - {i["class"] for i in instances}


def test_bf16_labelling_runs_and_is_fingerprinted(tmp_path: Path) -> None:
    labels = CountingLabels(cache_root=str(tmp_path / "cache"), precision="bf16")
    data = _data(tmp_path, labels)
    data.prepare_data()
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    labels.label_batch(batch)
    labels.flush()  # writes run in the background until flushed
    assert labels.images_labelled == 4 and not bool(batch["needs_label"].any())
    assert batch["target"].dtype == torch.uint8
    assert labels.cache is not None
    metadata = labels.cache.load_metadata(batch["id"][0])
    assert metadata is not None and all(
        isinstance(v, float) for i in metadata["instances"] for v in i["box"]
    )
    fp32 = OnlinePseudoLabels(
        cache_root=str(tmp_path / "cache"), detector="tiny", sam_checkpoint="tiny"
    )
    fp32.setup(data.source)
    assert fp32.cache is not None and fp32.cache.directory != labels.cache.directory
