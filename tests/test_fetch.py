"""``wsss_pl fetch``: every weight and dataset of a config in one table; offline, one line per
missing item (config key, exact path, the command that fetches it elsewhere), exit 2; bad input
(unknown name, unwritable cache, truncated download, a folder of another family); and the
weights checks of the other commands (label / fit up front, validate with a checkpoint offline)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import yaml

from cli_runner import run_cli, run_cli_in_process
from http_server import LocalServer, serve_directory
from wsss_pl.weights import CHECKPOINTS, HUB_MODELS, Checkpoint

REPO = Path(__file__).resolve().parents[1]
slow = pytest.mark.slow


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty weights cache and an empty Hugging Face cache for this test."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("WSSS_PL_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LocalServer]:
    with serve_directory(tmp_path / "www") as served:
        yield served


def _lines(text: str, prefix: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip().startswith(prefix)]


# What the shipped configs name (the spec of those files, not an output of fetch).
PAPER_WEIGHTS = {
    "voc.yaml": {
        "model.net.init_args.pretrained": "deeplabv2_coco_init",
        "data.train_labels.init_args.detector": "grounding-dino-tiny",
        "data.train_labels.init_args.sam_checkpoint": "sam_vit_h",
    },
    "coco.yaml": {
        "model.net.init_args.pretrained": "resnet101_imagenet",
        "data.train_labels.init_args.detector": "grounding-dino-tiny",
        "data.train_labels.init_args.sam_checkpoint": "sam_vit_h",
    },
    "compare_voc.yaml": {
        "labellers.paper.detector": "grounding-dino-tiny",
        "labellers.paper.sam_checkpoint": "sam_vit_h",
        "labellers.sam3.detector.init_args.model": "sam3",
        "labellers.owlv2.detector.init_args.model": "owlv2-base",
    },
}


def _expected_path(cache: Path, name: str) -> Path:
    if name in CHECKPOINTS:
        return cache / "checkpoints" / CHECKPOINTS[name].filename
    return cache / "hub" / name


@pytest.mark.parametrize("config", sorted(PAPER_WEIGHTS))
def test_offline_fetch_lists_every_missing_weight_in_one_run(
    tmp_path: Path, cache: Path, config: str
) -> None:
    result = run_cli_in_process(["fetch", "--config", str(REPO / "configs" / config)], tmp_path)
    assert result.returncode == 2, result.stderr
    missing = _lines(result.stdout, "missing:")
    for key, name in PAPER_WEIGHTS[config].items():
        path = _expected_path(cache, name)
        (line,) = [x for x in missing if f" {key} = {name} " in x]
        assert f"at {path}" in line
        if name in HUB_MODELS:
            assert f"hf download {HUB_MODELS[name].repo_id} --local-dir {path}" in line
            if HUB_MODELS[name].gated:  # never downloaded for you: the licence first
                assert "hf auth login" in line and "gated" in line
        else:
            assert f"curl -L -o {path}" in line and CHECKPOINTS[name].url in line
    assert len(missing) == len(PAPER_WEIGHTS[config]) + 1  # + the dataset (data/... absent)
    assert "Error" not in result.stdout + result.stderr  # no library exception text
    assert not any(cache.rglob("*.part"))  # offline: nothing was even started


def test_fetch_sees_a_model_folder_put_where_it_said(tmp_path: Path, cache: Path) -> None:
    """The path a missing line names is where the commands look: a folder copied there (as
    ``hf download --local-dir`` makes it) is present, and ``label`` would use it."""
    from transformers import GroundingDinoConfig

    from wsss_pl.weights import resolve_hub_model

    folder = cache / "hub" / "grounding-dino-tiny"
    GroundingDinoConfig().save_pretrained(folder)
    for name in HUB_MODELS["grounding-dino-tiny"].required_files[1:]:
        (folder / name).write_bytes(b"stand-in")
    result = run_cli_in_process(["fetch", "--config", str(REPO / "configs/voc.yaml")], tmp_path)
    assert result.returncode == 2
    assert not [x for x in _lines(result.stdout, "missing:") if "grounding-dino-tiny" in x]
    row = [x for x in result.stdout.splitlines() if x.startswith("grounding-dino-tiny ")]
    assert row and row[0].endswith("present") and str(folder) in row[0]
    assert resolve_hub_model("grounding-dino-tiny") == str(folder)


def _config(tmp_path: Path, pretrained: str | None = None, labels: dict | None = None) -> Path:
    config: dict = {"model": {"net": {"class_path": "wsss_pl.models.deeplab_v2.DeepLabV2",
                                      "init_args": {"pretrained": pretrained}}}}  # fmt: skip
    if labels is not None:
        config["data"] = {
            "train_labels": {"class_path": "wsss_pl.labeling.online.OnlinePseudoLabels",
                             "init_args": labels}
        }  # fmt: skip
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _serve_checkpoint(
    server: LocalServer, monkeypatch: pytest.MonkeyPatch, content: bytes, sha256: str
) -> Checkpoint:
    (server.root / "weights.pth").write_bytes(content)
    entry = Checkpoint(
        name="test_init", url=server.url("weights.pth"), filename="test_init.pth", sha256=sha256,
        size_bytes=len(content), licence="test licence",
    )  # fmt: skip
    monkeypatch.setitem(CHECKPOINTS, entry.name, entry)
    return entry


def test_fetch_downloads_then_finds_it_present(
    tmp_path: Path, cache: Path, server: LocalServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    content = b"weights " * 5000
    digest = hashlib.sha256(content).hexdigest()
    entry = _serve_checkpoint(server, monkeypatch, content, digest)
    args = ["fetch", "--config", str(_config(tmp_path, "test_init"))]
    online = {"HF_HUB_OFFLINE": "0"}
    result = run_cli_in_process(args, tmp_path, env=online)
    assert result.returncode == 0, result.stdout + result.stderr
    (row,) = [x for x in result.stdout.splitlines() if x.startswith("test_init ")]
    assert row.split()[-1] == "downloaded" and digest[:16] in row and "test licence" in row
    assert (cache / "checkpoints" / entry.filename).read_bytes() == content
    again = run_cli_in_process(args, tmp_path, env=online)
    (row,) = [x for x in again.stdout.splitlines() if x.startswith("test_init ")]
    assert again.returncode == 0 and row.split()[-1] == "present"
    assert len(server.requests) == 1


def test_truncated_download_is_one_line_and_resumable(
    tmp_path: Path, cache: Path, server: LocalServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    content = bytes(range(256)) * 400
    entry = _serve_checkpoint(server, monkeypatch, content, hashlib.sha256(content).hexdigest())
    server.drop_after["weights.pth"] = 30_000  # the connection breaks part-way
    args = ["fetch", "--config", str(_config(tmp_path, "test_init"))]
    result = run_cli_in_process(args, tmp_path, env={"HF_HUB_OFFLINE": "0"})
    assert result.returncode == 2
    (line,) = _lines(result.stdout, "missing:")
    assert "model.net.init_args.pretrained = test_init" in line
    assert "connection closed after 30000 of 102400 bytes" in line
    assert "Traceback" not in result.stderr and "Error" not in result.stdout
    target = cache / "checkpoints" / entry.filename
    assert not target.exists() and target.with_name(target.name + ".part").stat().st_size == 30_000
    resumed = run_cli_in_process(args, tmp_path, env={"HF_HUB_OFFLINE": "0"})
    assert resumed.returncode == 0 and target.read_bytes() == content
    assert server.requests[-1].range == "bytes=30000-"


def test_download_with_the_wrong_checksum_is_refused(
    tmp_path: Path, cache: Path, server: LocalServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    _serve_checkpoint(server, monkeypatch, b"other bytes", "0" * 64)
    args = ["fetch", "--config", str(_config(tmp_path, "test_init"))]
    result = run_cli_in_process(args, tmp_path, env={"HF_HUB_OFFLINE": "0"})
    assert result.returncode == 2
    (line,) = _lines(result.stdout, "missing:")
    assert "checksum mismatch" in line and not any(cache.rglob("test_init.pth"))


def test_unknown_names_are_named_with_their_key(tmp_path: Path, cache: Path) -> None:
    labels = {"detector": "gdino-tiny", "sam_checkpoint": "sam_vit_x"}
    args = ["fetch", "--config", str(_config(tmp_path, None, labels))]
    result = run_cli_in_process(args, tmp_path)
    assert result.returncode == 2
    unusable = _lines(result.stdout, "unusable:")
    (sam,) = [x for x in unusable if "data.train_labels.init_args.sam_checkpoint = sam_vit_x" in x]
    assert "not a known name" in sam and "sam_vit_h" in sam
    (detector,) = [x for x in unusable if "init_args.detector = gdino-tiny" in x]
    assert "owner/repo" in detector and "grounding-dino-tiny" in detector
    # the control: known names are only missing (offline), not unusable
    labels = {"detector": "grounding-dino-tiny", "sam_checkpoint": "sam_vit_b"}
    args = ["fetch", "--config", str(_config(tmp_path, None, labels))]
    result = run_cli_in_process(args, tmp_path)
    assert not _lines(result.stdout, "unusable:") and len(_lines(result.stdout, "missing:")) == 2


def test_bad_command_lines_are_one_line(tmp_path: Path) -> None:
    for args, needle in (
        (["fetch"], "fetch needs --config FILE"),
        (["fetch", "--config", str(REPO / "configs/voc.yml")], "(did you mean"),
        (["fetch", "--config", str(REPO / "configs/voc.yaml"), "--data.source"], "has no value"),
    ):
        result = run_cli_in_process(args, tmp_path)
        (line,) = result.stderr.strip().splitlines()
        assert result.returncode == 2 and needle in line and line.startswith("wsss_pl: error:")


def test_unwritable_cache_is_one_line(
    tmp_path: Path, server: LocalServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where the cache folder should be")
    content = b"x" * 100
    _serve_checkpoint(server, monkeypatch, content, hashlib.sha256(content).hexdigest())
    args = ["fetch", "--config", str(_config(tmp_path, "test_init"))]
    env = {"HF_HUB_OFFLINE": "0", "WSSS_PL_CACHE": str(blocker / "cache")}
    result = run_cli_in_process(args, tmp_path, env=env)
    assert result.returncode == 2 and not server.requests
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("wsss_pl: error: the weights cache ")
    assert str(blocker / "cache" / "checkpoints") in line and "WSSS_PL_CACHE" in line
    # the control: a writable cache downloads it
    env["WSSS_PL_CACHE"] = str(tmp_path / "cache")
    assert run_cli_in_process(args, tmp_path, env=env).returncode == 0


@pytest.mark.parametrize(("saved", "fits"), [("grounding-dino", False), ("owlv2", True)])
def test_folder_of_another_family_is_named(
    tmp_path: Path, cache: Path, saved: str, fits: bool
) -> None:
    from transformers import GroundingDinoConfig, Owlv2Config

    folder = tmp_path / "downloaded_model"
    (GroundingDinoConfig() if saved == "grounding-dino" else Owlv2Config()).save_pretrained(folder)
    labels = {
        "detector": {"class_path": "wsss_pl.labeling.detectors.OwlV2Spec",
                     "init_args": {"model": str(folder)}},
        "sam_checkpoint": "tiny",
    }  # fmt: skip
    result = run_cli_in_process(
        ["fetch", "--config", str(_config(tmp_path, None, labels))], tmp_path
    )
    assert result.returncode == (0 if fits else 2), result.stdout
    if fits:
        assert not _lines(result.stdout, "unusable:")
        return
    (line,) = _lines(result.stdout, "unusable:")
    assert "data.train_labels.init_args.detector.init_args.model" in line and str(folder) in line
    assert "holds a grounding-dino model" in line and "OwlV2Spec loads owlv2" in line
    assert "use wsss_pl.labeling.detectors.GroundingDinoSpec" in line


def test_label_names_every_missing_weight_before_building(tmp_path: Path, cache: Path) -> None:
    """``label`` checks all weights before the models are built: both missing ones at once."""
    labels = {"detector": "grounding-dino-tiny", "sam_checkpoint": "sam_vit_b"}
    config = _config(tmp_path, "resnet101_imagenet", labels)
    from wsss_pl.fetching import ensure_weights
    from wsss_pl.requirements import config_needs, load_config

    loaded = load_config([config])
    with pytest.raises(Exception, match="2 of the 2 weights") as caught:
        ensure_weights(config_needs(loaded, labels=True, data=False, net=False), "label")
    assert type(caught.value).__name__ == "WeightsError"
    with pytest.raises(Exception, match="3 of the 3 weights"):  # fit: the net's init weights too
        ensure_weights(config_needs(loaded, data=False), "fit")


def test_checkpoint_gives_the_backbone_style(tmp_path: Path) -> None:
    from jsonargparse import Namespace

    from wsss_pl.lightning_cli import _net_weights_from_checkpoint

    for flag, style in ((1, "caffe"), (0, "torchvision")):
        path = tmp_path / f"style{flag}.ckpt"
        torch.save(
            {"state_dict": {"net.caffe_backbone": torch.tensor(flag, dtype=torch.uint8)}}, path
        )
        init_args = Namespace(pretrained="deeplabv2_coco_init", backbone_style="auto")
        config = Namespace(ckpt_path=str(path), model=Namespace(net=Namespace(init_args=init_args)))
        _net_weights_from_checkpoint(config)
        assert init_args.pretrained is None and init_args.backbone_style == style


@slow
def test_validate_with_a_checkpoint_runs_offline_without_init_weights(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """configs/voc.yaml names deeplabv2_coco_init; a checkpoint holds every weight, so validate
    neither downloads nor asks for it (empty cache, HF_HUB_OFFLINE=1, no network needed), and
    only fit from random weights warns about freeze_bn."""
    from wsss_pl.data.synthetic import make_synthetic_voc

    make_synthetic_voc(tmp_path / "data", num_train=2, num_val=2, image_size=(48, 64))
    ids = (tmp_path / "data/VOC2012/ImageSets/Segmentation/train.txt").read_text()
    (tmp_path / "data/train_aug.txt").write_text(ids)
    small = {
        "trainer": {"accelerator": "cpu", "max_steps": 1, "val_check_interval": 1,
                    "num_sanity_val_steps": 0, "enable_progress_bar": False,
                    "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                               "init_args": {"save_dir": "runs"}}},
        "model": {"net": {"init_args": {"backbone": "resnet18"}}, "msc_scales": None,
                  "test_crf": False},
        "data": {"source": {"init_args": {"root": "data", "train_split": "train"}},
                 "train_labels": {"init_args": {"detector": "tiny", "sam_checkpoint": "tiny",
                                                "cache_root": "pl"}},
                 "global_batch_size": 2, "num_workers": 0, "crop_size": 33, "pin_memory": False},
    }  # fmt: skip
    (tmp_path / "small.yaml").write_text(yaml.safe_dump(small))
    env = {"WSSS_PL_CACHE": str(tmp_path / "empty_cache")}
    voc = ["--config", str(REPO / "configs/voc.yaml"), "--config", "small.yaml"]
    fit_args = ["fit", *voc, "--model.net.init_args.pretrained", "null"]
    fit = run_cli_in_process(fit_args, tmp_path, env=env)
    assert fit.returncode == 0, fit.stderr[-3000:]
    said = fit.stderr + caplog.text  # in this process, pytest captures the log records
    assert "training starts from a randomly initialised backbone with freeze_bn" in said
    (checkpoint,) = tmp_path.glob("runs/**/last.ckpt")
    result = run_cli(["validate", *voc, "--ckpt_path", str(checkpoint)], tmp_path, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "val mIoU" in result.stdout
    assert "deeplabv2" not in (result.stdout + result.stderr).lower()
    assert "freeze_bn" not in result.stderr
    assert not (tmp_path / "empty_cache").exists()  # nothing resolved, nothing downloaded
    # the control: without the checkpoint the init weights are needed, and named up front
    plain = run_cli_in_process(["validate", *voc], tmp_path, env=env)
    assert plain.returncode == 2
    assert "model.net.init_args.pretrained = deeplabv2_coco_init" in plain.stderr
