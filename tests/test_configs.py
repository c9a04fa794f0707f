"""Every shipped config parses, and the main configs are the paper's pipeline."""

from __future__ import annotations

import contextlib
import functools
import io
from pathlib import Path

import pytest
import yaml

from wsss_pl.cli import build_cli

# compare_*.yaml are compare-labels configs (tests/test_compare_labels.py), not training configs.
CONFIGS = sorted(
    p
    for p in (Path(__file__).resolve().parents[1] / "configs").glob("*.yaml")
    if not p.stem.startswith("compare_")
)


@functools.cache
def _resolved_text(path: Path) -> str:
    out = io.StringIO()
    with pytest.raises(SystemExit) as exit_, contextlib.redirect_stdout(out):
        build_cli(["fit", "--config", str(path), "--print_config"])
    assert exit_.value.code in (0, None)
    return out.getvalue()


def _resolved(path: Path) -> dict:
    """The config as ``fit --print_config`` resolves it (parsed once per file)."""
    return yaml.safe_load(_resolved_text(path))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_config_resolves(path: Path) -> None:
    config = _resolved(path)
    assert config["model"]["net"]["class_path"]
    assert config["data"]["source"]["class_path"]


@pytest.mark.parametrize("name", ["voc", "coco"])
def test_main_configs_run_the_paper(name: str) -> None:
    config = _resolved(Path(__file__).resolve().parents[1] / "configs" / f"{name}.yaml")
    labels = config["data"]["train_labels"]
    assert labels["class_path"] == "wsss_pl.labeling.online.OnlinePseudoLabels"
    args = labels["init_args"]
    assert args["detector"] == "grounding-dino-tiny"  # Swin-T
    assert (args["sam_type"], args["sam_checkpoint"]) == ("vit_h", "sam_vit_h")
    assert (args["box_threshold"], args["text_threshold"]) == (0.3, 0.25)
    assert args["merge_policy"] == "paper" and args["conflict"] == "keep"
    assert args["missing_class_policy"] == "leave"
    assert args["precision"] == "32"
    assert args["preset"] == "paper" and args["batch_mode"] == "fixed"
    net = config["model"]["net"]["init_args"]
    assert config["model"]["net"]["class_path"] == "wsss_pl.models.deeplab_v2.DeepLabV2"
    assert (net["backbone"], net["output_stride"], net["atrous_rates"]) == (
        "resnet101", 8, [6, 12, 18, 24],
    )  # fmt: skip
    assert net["freeze_bn"] is True
    # VOC starts from DeepLab-v2's COCO-pretrained Caffe model, COCO from ImageNet.
    assert net["pretrained"] == ("deeplabv2_coco_init" if name == "voc" else "resnet101_imagenet")
    model = config["model"]
    assert model["msc_scales"] == [1.0, 0.75, 0.5]  # DeepLab-v2's MSC training
    # DeepLab-v2 / deeplab-pytorch test with multi-scale max fusion and no flip.
    assert model["test_scales"] == [1.0, 0.75, 0.5] and model["test_flip"] is False
    assert model["loss_groups"] == 2  # deeplab-pytorch's ITER_SIZE 2 x 5 images
    assert model["test_crf"] is (name == "voc")
    trainer = config["trainer"]
    assert trainer["max_steps"] == (20000 if name == "voc" else 100000)
    data = config["data"]
    # 10 images per step on any GPU count; deeplab-pytorch's scale set.
    assert data["global_batch_size"] == 10 and data["batch_size"] is None
    assert data["crop_size"] == 321 and data["scales"] == [0.5, 0.75, 1.0, 1.25, 1.5]
    assert data["pad_rgb"] == "auto"


@pytest.mark.parametrize("name", ["voc_supervised", "coco_supervised"])
def test_supervised_baselines_train_on_ground_truth(name: str) -> None:
    config = _resolved(Path(__file__).resolve().parents[1] / "configs" / f"{name}.yaml")
    assert config["data"]["train_labels"]["class_path"].endswith("GroundTruthLabels")
