"""Faults a user or operator meets, each reported as one line (exit code 2), nothing lost.

Issue 8 items 8-13: errors from DataLoader workers, full disk and read-only caches, bad
checkpoints and settings, path traversal, shared caches and data folders, orphaned temp files.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cli_runner import DEMO_CONFIG, REPO, run_cli
from wsss_pl.classes import VOC
from wsss_pl.data.synthetic import make_synthetic_voc
from wsss_pl.errors import DataError
from wsss_pl.io import temp_prefix

ONLINE_CONFIG = REPO / "configs" / "demo_online.yaml"
SMALL = [
    "--data.source.init_args.num_train", "6",
    "--data.source.init_args.num_val", "2",
    "--data.source.init_args.image_size", "[48, 64]",
    "--data.batch_size", "3",
    "--data.val_batch_size", "2",
    "--data.crop_size", "33",
    "--trainer.logger", "false",
]  # fmt: skip


def _one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    """The error line of a failed CLI run; asserts exit code 2 and no traceback."""
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-4000:]
    assert "Traceback" not in result.stderr and "Caught" not in result.stderr, result.stderr[-4000:]
    # A progress bar may share the line (tqdm ends without a newline).
    marker = "wsss_pl: error:"
    lines = [line[line.index(marker) :] for line in result.stderr.splitlines() if marker in line]
    assert len(lines) == 1, result.stderr[-3000:]
    return lines[0]


def _synthetic(tmp_path: Path) -> Path:
    root = tmp_path / "data" / "synthetic_voc"
    make_synthetic_voc(root, num_train=6, num_val=2, image_size=(48, 64))
    return root / "VOC2012"


def _run_faulty(
    mode: str, directory: Path, args: list[str], cwd: Path
) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(REPO / "tests" / "fault_injection.py"), mode, str(directory)]
    return subprocess.run(
        [*command, "--", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


# --- item 8: errors raised in DataLoader workers -------------------------------------------------
@pytest.mark.slow
def test_worker_errors_are_one_line(tmp_path: Path) -> None:
    voc = _synthetic(tmp_path)
    val_ids = (voc / "ImageSets/Segmentation/val.txt").read_text().split()
    args = ["validate", "--config", str(DEMO_CONFIG), *SMALL, "--data.num_workers", "1"]
    # A zero-byte image, decoded in a worker process.
    (voc / "JPEGImages" / f"{val_ids[0]}.jpg").write_bytes(b"")
    line = _one_line_error(run_cli(args, tmp_path))
    assert f"{val_ids[0]}.jpg is empty (0 bytes)" in line and "skip_corrupt" in line
    # A ground-truth mask of the wrong size: the message names the mask file.
    make_synthetic_voc(tmp_path / "data" / "fresh", num_train=6, num_val=2, image_size=(48, 64))
    shutil.copy(
        tmp_path / "data/fresh/VOC2012/JPEGImages" / f"{val_ids[0]}.jpg", voc / "JPEGImages"
    )
    mask = voc / "SegmentationClass" / f"{val_ids[1]}.png"
    Image.fromarray(np.zeros((20, 30), np.uint8), mode="P").save(mask)
    line = _one_line_error(run_cli(args, tmp_path))
    assert f"SegmentationClass/{val_ids[1]}.png is (20, 30)" in line and "(48, 64)" in line


def test_worker_error_unwrapping_keeps_multiline_messages() -> None:
    from torch.utils.data import DataLoader, Dataset

    from wsss_pl.errors import CacheError, UnknownClassError

    class Failing(Dataset):
        def __init__(self, error: Exception) -> None:
            self.error = error

        def __len__(self) -> int:
            return 1

        def __getitem__(self, index: int) -> None:
            raise self.error

    for error in (CacheError("first line\n  second line"), UnknownClassError("no such class")):
        with pytest.raises(type(error)) as caught:
            next(iter(DataLoader(Failing(error), num_workers=1)))
        assert str(caught.value) == str(error)


# --- items 9, 12 (permissions), 13: read-only and full caches, shared use, orphaned temps --------
@pytest.mark.slow
def test_read_only_and_full_cache(tmp_path: Path) -> None:
    cache_root = tmp_path / "cache"
    label = ["label", "--config", str(ONLINE_CONFIG), *SMALL, "--data.num_workers", "0",
             "--data.train_labels.init_args.cache_root", str(cache_root)]  # fmt: skip
    old_umask = os.umask(0o002)  # a group-shared cache: the second user must be able to write
    try:
        first = run_cli(label, tmp_path)
    finally:
        os.umask(old_umask)
    assert first.returncode == 0, first.stderr[-4000:]
    (manifest,) = cache_root.glob("*/*/manifest.json")
    cache_dir = manifest.parent
    assert manifest.stat().st_mode & 0o777 == 0o664
    assert all(p.stat().st_mode & 0o777 == 0o664 for p in cache_dir.glob("*.png"))
    # A temp file of a killed writer (dead pid on this host) and one of a live process.
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()  # fmt: skip
    orphan = cache_dir / f"{temp_prefix('x.png').rsplit('-', 1)[0]}-{dead}.abc_12.tmp"
    live = cache_dir / f"{temp_prefix('y.png')}def_34.tmp"  # this test process: alive
    orphan.write_bytes(b"half")
    live.write_bytes(b"half")
    again = run_cli(label, tmp_path)
    assert again.returncode == 0, again.stderr[-4000:]
    assert not orphan.exists() and live.exists()  # removed at once, not after an hour
    live.unlink()
    shutil.rmtree(cache_dir / "label_pass")

    # The complete cache, read-only (patched writes fail as on a read-only mount, also for root).
    before = sorted(p.name for p in cache_dir.iterdir())
    result = _run_faulty("readonly", cache_root, label, tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "report" in result.stderr and "not written" in result.stderr
    fit = ["fit", *label[1:], "--trainer.max_epochs", "1", "--trainer.limit_val_batches", "1"]
    result = _run_faulty("readonly", cache_root, fit, tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    assert sorted(p.name for p in cache_dir.iterdir()) == before

    # A fresh cache on a full disk, and an incomplete one on a read-only disk: one line each.
    full = tmp_path / "full"
    full.mkdir()
    label_full = [*label[:-1], str(full)]
    line = _one_line_error(_run_faulty("enospc", full, label_full, tmp_path))
    assert "No space left on device" in line and str(full) in line and "cache_root" in line
    for png in list(cache_dir.glob("*.png"))[:2]:
        png.unlink()
    line = _one_line_error(_run_faulty("readonly", cache_root, label, tmp_path))
    assert "Read-only file system" in line and str(cache_dir) in line and "cache_root" in line


def test_orphan_temp_files_of_dead_writers_go_at_once(tmp_path: Path) -> None:
    from wsss_pl.io import remove_orphan_temp_files

    dead_pid = subprocess.Popen([sys.executable, "-c", "pass"])
    dead_pid.wait()
    host = temp_prefix("a").rsplit("-", 1)[0][len(".a.") :]
    dead = tmp_path / f".a.png.{host}-{dead_pid.pid}.k2j_x.tmp"
    mine = tmp_path / f"{temp_prefix('b.png')}zz9.tmp"
    other_host = tmp_path / f".c.png.elsewhere-{dead_pid.pid}.q1.tmp"
    for path in (dead, mine, other_host):
        path.write_bytes(b"")
    assert remove_orphan_temp_files(tmp_path) == 1
    assert not dead.exists() and mine.exists() and other_host.exists()
    os.utime(other_host, (0, 0))  # another host's: only by age
    assert remove_orphan_temp_files(tmp_path, older_than_s=3600) == 1


# --- item 10: checkpoints and settings -----------------------------------------------------------
class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (Path.touch, (self.marker,))


@pytest.mark.slow
def test_bad_checkpoints_and_batch_size(tmp_path: Path) -> None:
    from wsss_pl.labeling.tiny import tiny_grounding_dino
    from wsss_pl.models.deeplab_v2 import DeepLabV2

    marker = tmp_path / "payload_ran"
    torch.save({"state_dict": {"x": _Payload(marker)}}, tmp_path / "evil.ckpt")
    net = DeepLabV2(num_classes=21, backbone="resnet18", pretrained=None)
    state = {f"net.{k}": v for k, v in net.state_dict().items()}
    torch.save({"state_dict": state, "hyper_parameters": {}}, tmp_path / "r18.ckpt")
    base = ["--config", str(DEMO_CONFIG), *SMALL, "--data.num_workers", "0"]

    line = _one_line_error(run_cli(["validate", *base, "--ckpt_path", "evil.ckpt"], tmp_path))
    assert "evil.ckpt" in line and "pickled Python objects" in line
    resnet34 = ["--model.net.init_args.backbone", "resnet34", "--ckpt_path", "r18.ckpt"]
    line = _one_line_error(run_cli(["test", *base, *resnet34], tmp_path))
    assert "r18.ckpt" in line and "another architecture" in line and "keys missing" in line
    line = _one_line_error(run_cli(["fit", *base, "--data.batch_size", "-1"], tmp_path))
    assert "data.batch_size is -1" in line

    detector = tmp_path / "detector"
    tiny_grounding_dino(0).save_pretrained(detector)
    (detector / "model.safetensors").unlink()
    torch.save({"w": _Payload(marker)}, detector / "pytorch_model.bin")
    label = ["label", "--config", str(ONLINE_CONFIG), *SMALL[:-2], "--data.num_workers", "0",
             "--trainer.logger", "false", "--data.train_labels.init_args.detector", str(detector)]  # fmt: skip
    line = _one_line_error(run_cli(label, tmp_path))
    assert "pytorch_model.bin" in line and "pickled Python objects" in line
    assert not marker.exists()  # the payload never ran


def test_checkpoint_that_is_no_checkpoint(tmp_path: Path) -> None:
    import pickle

    from wsss_pl.errors import WeightsError
    from wsss_pl.weights import load_training_checkpoint

    (tmp_path / "plain.pkl").write_bytes(pickle.dumps({"a": 1}))
    torch.save({"weights": torch.zeros(2)}, tmp_path / "bare.pt")
    with pytest.raises(WeightsError, match="plain.pkl .*not written by torch.save"):
        load_training_checkpoint(tmp_path / "plain.pkl")
    with pytest.raises(WeightsError, match="bare.pt .*no 'state_dict'"):
        load_training_checkpoint(tmp_path / "bare.pt")
    assert load_training_checkpoint("last") is None


# --- item 11: path traversal --------------------------------------------------------------------
def test_paths_outside_the_data_root_are_refused(tmp_path: Path) -> None:
    from wsss_pl.classes import ClassVocabulary
    from wsss_pl.data.coco import COCODataset
    from wsss_pl.data.folder import ImageFolderDataset
    from wsss_pl.data.voc import VOCDataset

    root = tmp_path / "images"
    root.mkdir()
    Image.new("RGB", (8, 8)).save(root / "a.jpg")
    Image.new("RGB", (8, 8)).save(tmp_path / "outside.jpg")
    vocabulary = ClassVocabulary(name="pets", class_names=("cat",))
    for key in (
        "../outside.jpg",
        str(tmp_path / "outside.jpg"),
        "../../../etc/passwd",
        "../outside",
    ):
        (root / "labels.json").write_text(json.dumps({"a.jpg": ["cat"], key: ["cat"]}))
        with pytest.raises(DataError, match=r"points outside .*images.*'\.\.'"):
            ImageFolderDataset(root, "labels.json", vocabulary)
    # VOC id lists are reduced to file stems, so "../x" is the id "x" inside JPEGImages.
    voc = _synthetic(tmp_path)
    (voc / "ImageSets/Segmentation/evil.txt").write_text("synth_000000\n../../../../outside\n")
    with pytest.raises(
        DataError, match=r"no JPEG image, e.g. outside \(.*VOC2012/JPEGImages/outside"
    ):
        VOCDataset(voc.parent, "evil", gt_dirs=["VOC2012/SegmentationClass"])
    # A COCO file_name that climbs out of the image folder.
    coco = tmp_path / "coco"
    (coco / "annotations").mkdir(parents=True)
    (coco / "val2017").mkdir()
    instances = {
        "images": [{"id": 1, "file_name": "../../outside.jpg", "height": 8, "width": 8}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0,
                         "segmentation": [[0, 0, 4, 0, 4, 4]], "area": 8, "bbox": [0, 0, 4, 4]}],
        "categories": [{"id": 1, "name": "person"}],
    }  # fmt: skip
    (coco / "annotations/instances_val2017.json").write_text(json.dumps(instances))
    with pytest.raises(
        DataError, match=r"instances_val2017.json: file_name '../../outside.jpg' points"
    ):
        COCODataset(coco, "val", year=2017)


@pytest.mark.slow
def test_labels_key_outside_root_through_the_cli(tmp_path: Path) -> None:
    root = tmp_path / "images"
    root.mkdir()
    Image.new("RGB", (32, 32)).save(root / "a.jpg")
    Image.new("RGB", (32, 32)).save(tmp_path / "outside.jpg")
    (root / "labels.json").write_text(json.dumps({"a.jpg": ["cat"], "../outside.jpg": ["cat"]}))
    args = ["validate", "--config", str(DEMO_CONFIG), "--trainer.logger", "false",
            "--data.source", "wsss_pl.data.folder.ImageFolder", "--data.source.init_args.root", str(root),
            "--data.source.init_args.classes", "[cat]", "--data.num_workers", "0"]  # fmt: skip
    line = _one_line_error(run_cli(args, tmp_path))
    assert "'../outside.jpg' points outside" in line and "labels.json" in line


# --- item 12: several processes on one data folder and one cache --------------------------------
def _generate(root: str, barrier: object) -> None:
    barrier.wait()  # type: ignore[attr-defined]
    voc = make_synthetic_voc(root, num_train=4, num_val=1, image_size=(40, 48)) / "VOC2012"
    # Every file of the set is there right after this process returns, whoever wrote it.
    ids = (voc / "ImageSets/Segmentation/trainval.txt").read_text().split()
    assert len(ids) == 5 and all((voc / "JPEGImages" / f"{i}.jpg").is_file() for i in ids)


def test_concurrent_synthetic_generation(tmp_path: Path) -> None:
    context = multiprocessing.get_context("fork")
    for round_ in range(4):
        barrier = context.Barrier(3)
        root = str(tmp_path / f"r{round_}")
        procs = [context.Process(target=_generate, args=(root, barrier)) for _ in range(3)]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join(120)
        assert [p.exitcode for p in procs] == [0, 0, 0]
        assert not [p for p in Path(root).iterdir() if p.name != "VOC2012"]  # no staging left


@pytest.mark.slow
def test_two_label_runs_started_together(tmp_path: Path) -> None:
    args = ["label", "--config", str(ONLINE_CONFIG), *SMALL, "--data.num_workers", "0"]
    env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen([sys.executable, "-m", "wsss_pl", *args], cwd=tmp_path, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]  # fmt: skip
    outputs = [proc.communicate(timeout=300) for proc in procs]
    for proc, (_, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err[-4000:]
    (cache_dir,) = [
        p.parent for p in tmp_path.glob("runs/demo_online/pseudo_labels/*/*/manifest.json")
    ]
    assert len(list(cache_dir.glob("*.png"))) == 6


def test_export_never_modifies_the_cache(tmp_path: Path) -> None:
    from wsss_pl.labeling.storage.cache import PseudoLabelCache
    from wsss_pl.labeling.storage.export import main as export_main

    cache = PseudoLabelCache(
        tmp_path / "cache", "voc", {"classes": list(VOC.class_names)}, VOC.palette()
    )
    label = torch.zeros(6, 8, dtype=torch.uint8)
    for sample_id in ("a", "b"):
        cache.store(sample_id, label, {"id": sample_id, "height": 6, "width": 8, "instances": []})
    torn = cache.path("b")
    torn.write_bytes(torn.read_bytes()[:20])
    snapshot = {p.name: p.read_bytes() for p in cache.directory.iterdir()}
    with pytest.warns(RuntimeWarning, match="left in place"):
        code = export_main(
            ["--cache", str(cache.directory), "--output", str(tmp_path / "out.json")]
        )
    assert code == 0
    assert {p.name: p.read_bytes() for p in cache.directory.iterdir()} == snapshot
    assert [i["wsss_pl_id"] for i in json.loads((tmp_path / "out.json").read_text())["images"]] == [
        "a"
    ]
