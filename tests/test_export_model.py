"""export-model: uint8 image in, logits / class map out, ONNX (onnxruntime) and TorchScript."""

from __future__ import annotations

import json
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import yaml
from equivalence import (
    assert_class_maps_match,
    assert_informative_class_map,
    compare_class_maps,
    top2_margin,
)

from wsss_pl.classes import VOC
from wsss_pl.export_model import DeployableSegmenter, load_net, main
from wsss_pl.models import DeepLabV2
from wsss_pl.module import SegmentationModule

# The exported logits must be within LOGIT_ATOL of PyTorch's; a pixel's class can then flip only
# where PyTorch's top-2 margin is below 2 * LOGIT_ATOL (both logits move by up to LOGIT_ATOL):
# those near-ties are excused, every other differing pixel fails the test.
LOGIT_ATOL = 1e-3
TIE_TOLERANCE = 2 * LOGIT_ATOL


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A real Lightning checkpoint of a DeepLab-v2 R18 (OS 16, two rates) and its config."""
    directory = tmp_path_factory.mktemp("ckpt")
    init = {"num_classes": 21, "backbone": "resnet18", "output_stride": 16,
            "atrous_rates": [3, 7], "freeze_bn": False}  # fmt: skip
    torch.manual_seed(0)
    net = DeepLabV2(**init)
    for module in net.modules():  # non-trivial BatchNorm statistics, so folding them is tested
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    module = SegmentationModule(net, class_names=list(VOC.class_names))
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False)
    trainer.strategy.connect(module)
    trainer.save_checkpoint(directory / "last.ckpt")
    config = directory / "config.yaml"
    config.write_text(yaml.safe_dump({
        "model": {"net": {"class_path": "wsss_pl.models.deeplab_v2.DeepLabV2", "init_args": init}},
        "data": {"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3]},
    }))  # fmt: skip
    return directory / "last.ckpt", config


def _images(sample_data: Path) -> list[str]:
    return sorted(str(p) for p in (sample_data / "voc_sample/VOC2012/JPEGImages").glob("*.jpg"))


def test_wrapper_matches_the_training_convention(checkpoint: tuple[Path, Path]) -> None:
    net, data = load_net(*checkpoint)
    model = DeployableSegmenter(net, data["mean"], data["std"])
    image = torch.randint(0, 256, (2, 3, 50, 70), dtype=torch.uint8)
    x = (image.float() / 255 - torch.tensor(data["mean"]).view(1, 3, 1, 1)) / torch.tensor(
        data["std"]
    ).view(1, 3, 1, 1)
    expected = torch.nn.functional.interpolate(
        net(x), size=(50, 70), mode="bilinear", align_corners=False
    )
    with torch.no_grad():
        assert torch.allclose(model(image), expected, atol=1e-4)
    labels = DeployableSegmenter(net, data["mean"], data["std"], output="labels")(image)
    assert labels.dtype == torch.uint8
    # Normalising here and inside the wrapper round differently: only near-ties may flip.
    assert_class_maps_match(labels, expected.argmax(1), top2_margin(expected), 2e-4)


@pytest.mark.sample_data
@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_matches_pytorch_on_real_images(
    fmt: str, checkpoint: tuple[Path, Path], sample_data: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    ckpt, config = checkpoint
    out = tmp_path / f"model.{fmt}"
    images = _images(sample_data)[:2]  # 500x281 and 500x366: two sizes through one graph
    argv = ["--ckpt", str(ckpt), "--config", str(config), "--format", fmt, "--output", str(out),
            "--repeats", "1", "--verify", *images]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "CPU latency" in printed
    summary = json.loads((tmp_path / f"model.{fmt}.verify.json").read_text())
    sizes = {tuple(r["size"]) for r in summary["images"]}
    assert len(sizes) >= 2  # real images of different sizes through one graph: dynamic H, W
    assert summary["max_abs_logit_diff"] < LOGIT_ATOL
    # The class maps: every pixel agrees except near-ties of PyTorch's logits (the verify
    # summary's argmax_diff_pixels counts those too; 1 of 183,000 was seen on one machine).
    for image, (got, reference) in zip(
        images, _run_both(ckpt, config, out, fmt, images), strict=True
    ):
        stats = assert_informative_class_map(reference, TIE_TOLERANCE)
        result = assert_class_maps_match(
            got.argmax(1), reference.argmax(1), top2_margin(reference), TIE_TOLERANCE
        )
        print(f"{fmt} {Path(image).name}: reference {stats}, {result}")


def _run_both(ckpt: Path, config: Path, out: Path, fmt: str, images: list[str], bgr=False):
    """(exported logits, PyTorch logits) [1, C, H, W] per image; ``bgr`` feeds the exported file
    the image with its channels reversed (a mistake the comparison must catch)."""
    from wsss_pl.export_model import _Runner
    from wsss_pl.io import read_image

    net, data = load_net(ckpt, config)
    model = DeployableSegmenter(net, data["mean"], data["std"]).eval()
    runner = _Runner(out, fmt, threads=1)
    for path in images:
        image = read_image(Path(path))[None]
        with torch.no_grad():
            reference = model(image).numpy()
        fed = image.flip(1) if bgr else image
        yield runner.run(fed.numpy()), reference


@pytest.mark.sample_data
def test_export_comparison_fails_on_swapped_channels(
    checkpoint: tuple[Path, Path], sample_data: Path, tmp_path: Path
) -> None:
    """The class-map check above can fail: BGR instead of RGB changes classes far from ties."""
    ckpt, config = checkpoint
    out = tmp_path / "model.onnx"
    assert main(["--ckpt", str(ckpt), "--config", str(config), "--output", str(out)]) == 0
    image = _images(sample_data)[:1]
    ((got, reference),) = list(_run_both(ckpt, config, out, "onnx", image, bgr=True))
    result = compare_class_maps(
        got.argmax(1), reference.argmax(1), top2_margin(reference), TIE_TOLERANCE
    )
    print(f"onnx fed BGR: {result}")
    assert result.unexcused > 0.01 * result.pixels


@pytest.mark.sample_data
def test_onnx_class_map_output_and_inferred_net(
    checkpoint: tuple[Path, Path], sample_data: Path, tmp_path: Path
) -> None:
    import onnxruntime as ort

    from wsss_pl.io import read_image

    ckpt, config = checkpoint
    out = tmp_path / "labels.onnx"
    assert main(["--ckpt", str(ckpt), "--config", str(config), "--output_type", "labels",
                 "--output", str(out)]) == 0  # fmt: skip
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    image = read_image(Path(_images(sample_data)[0]))[None]
    (labels,) = session.run(None, {"image": image.numpy()})
    net, data = load_net(ckpt, config)
    with torch.no_grad():
        expected = DeployableSegmenter(net, data["mean"], data["std"], output="labels")(image)
    assert labels.dtype == np.uint8 and labels.shape == tuple(expected.shape)
    with torch.no_grad():
        logits = DeployableSegmenter(net, data["mean"], data["std"])(image)
    assert_class_maps_match(labels, expected.numpy(), top2_margin(logits), TIE_TOLERANCE)
    # Without a config a DeepLabV2 is inferred (OS 8 assumed): here OS 16 was trained, so the
    # weights load but the user is told to pass --config when the rates differ.
    inferred, _ = load_net(ckpt)
    assert isinstance(inferred, DeepLabV2) and inferred.num_classes == 21
    assert inferred.backbone_arch == "resnet18" and len(inferred.classifier.convs) == 2


def test_bad_input_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from wsss_pl.cli import main as cli_main

    assert main(["--ckpt", str(tmp_path / "missing.ckpt")]) == 2
    assert "missing.ckpt" in capsys.readouterr().err
    assert cli_main(["export-model", "--ckpt", str(tmp_path / "other.ckpt")]) == 2  # the CLI hook
    assert "other.ckpt" in capsys.readouterr().err


def test_light_segmenter_trains_loads_imagenet_and_exports(tmp_path: Path) -> None:
    """LR-ASPP MobileNetV3: same net interface as DeepLabV2, and exportable to ONNX."""
    import onnxruntime as ort
    import torchvision

    from wsss_pl.data.datamodule import WSSSDataModule
    from wsss_pl.data.label_sources import GroundTruthLabels
    from wsss_pl.data.synthetic import SyntheticVOC
    from wsss_pl.export_model import export
    from wsss_pl.models.lraspp import LRASPPMobileNetV3

    imagenet = tmp_path / "mobilenet_v3_large.pth"  # the torchvision layout (random weights)
    reference = torchvision.models.mobilenet_v3_large(weights=None)
    torch.save(reference.state_dict(), imagenet)
    net = LRASPPMobileNetV3(num_classes=21, pretrained=str(imagenet))
    assert torch.equal(net.backbone["0"][0].weight, reference.features[0][0].weight)
    groups = net.param_groups(0.01, 4e-5)
    assert [g["lr_mult"] for g in groups] == [1.0, 10.0]
    grouped = [id(p) for g in groups for p in g["params"]]
    assert sorted(grouped) == sorted(id(p) for p in net.parameters())  # each exactly once
    source = SyntheticVOC(str(tmp_path / "voc"), num_train=4, num_val=2, image_size=(64, 80))
    data = WSSSDataModule(source, GroundTruthLabels(), batch_size=2, val_batch_size=2,
                          num_workers=0, crop_size=49, pin_memory=False)  # fmt: skip
    module = SegmentationModule(net, class_names=data.class_names)
    pl.seed_everything(0, verbose=False)  # a trained fixture: seeded and deterministic
    trainer = pl.Trainer(accelerator="cpu", deterministic=True, max_epochs=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, num_sanity_val_steps=0)  # fmt: skip
    before = net.classifier.high_classifier.weight.clone()
    trainer.fit(module, datamodule=data)
    assert not torch.equal(before, net.classifier.high_classifier.weight)  # it trained
    model = DeployableSegmenter(net)
    path = export(model, tmp_path / "light.onnx", "onnx")
    image = torch.randint(0, 256, (1, 3, 75, 103), dtype=torch.uint8)
    (logits,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"image": image.numpy()}
    )
    with torch.no_grad():
        expected = model(image).numpy()
    assert logits.shape == (1, 21, 75, 103) and np.abs(logits - expected).max() < 1e-3


def test_caffe_conventions_travel_into_the_export(tmp_path: Path) -> None:
    """A Caffe-style DeepLab-v2 (BGR 0..255 minus the Caffe mean inside forward) is rebuilt from
    its weights and exported with the same outputs."""
    import onnxruntime as ort

    from wsss_pl.export_model import export

    torch.manual_seed(0)
    net = DeepLabV2(num_classes=5, backbone="resnet50", backbone_style="caffe",
                    input_convention="caffe_bgr", freeze_bn=False).eval()  # fmt: skip
    ckpt = tmp_path / "caffe.ckpt"
    torch.save({"state_dict": {f"net.{k}": v for k, v in net.state_dict().items()}}, ckpt)
    rebuilt, _ = load_net(ckpt)  # no config: inferred, conventions from the buffers
    assert int(rebuilt.caffe_backbone) == 1 and int(rebuilt.caffe_input) == 1
    path = export(DeployableSegmenter(rebuilt), tmp_path / "caffe.onnx", "onnx")
    image = torch.randint(0, 256, (1, 3, 65, 81), dtype=torch.uint8)
    (got,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"image": image.numpy()}
    )
    with torch.no_grad():
        expected = DeployableSegmenter(net)(image).numpy()
    scale = max(float(np.abs(expected).max()), 1.0)
    assert np.abs(got - expected).max() / scale < 1e-4
    tolerance = 2 * 1e-4 * scale  # a class may flip only where the top-2 margin is below it
    assert_class_maps_match(got.argmax(1), expected.argmax(1), top2_margin(expected), tolerance)
