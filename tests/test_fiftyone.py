"""``review --fiftyone``: the FiftyOne dataset equals the cache, and its App opens in Chromium.

FiftyOne (the ``review`` extra) and its database run from a temporary folder
(FIFTYONE_DATABASE_DIR), so nothing leaks into ~/.fiftyone. Skipped when FiftyOne is not
installed; the App test also when /usr/bin/chromium is absent (``apt-get install chromium``).
"""

from __future__ import annotations

import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from review_fixtures import SIZE, review_setup

from wsss_pl.classes import VOC, voc_palette
from wsss_pl.cli import main
from wsss_pl.data.synthetic import SyntheticVOC
from wsss_pl.io import write_label
from wsss_pl.labeling.storage.cache import PseudoLabelCache
from wsss_pl.labeling.storage.corrections import CorrectionsLayer, corrections_dir
from wsss_pl.review_queue import rank_cache

CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="module")
def fo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """``fiftyone``, imported with its database and dataset folders in a temporary folder."""
    home = tmp_path_factory.mktemp("fiftyone")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FIFTYONE_DATABASE_DIR", str(home / "db"))
        patch.setenv("FIFTYONE_DEFAULT_DATASET_DIR", str(home / "datasets"))
        patch.setenv("FIFTYONE_DO_NOT_TRACK", "true")
        patch.setenv("FIFTYONE_DATABASE_VALIDATION", "false")  # mongod 6.0's deprecation note
        if "fiftyone" in sys.modules:
            pytest.skip("fiftyone was imported before its database folder could be set")
        yield pytest.importorskip(
            "fiftyone", reason="FiftyOne not installed: pip install '.[review]'"
        )


def _predictions(folder: Path, cache: PseudoLabelCache, ids: list[str]) -> dict[str, np.ndarray]:
    """Random predicted maps for all ids but the last (``predict``'s <id>.png layout)."""
    generator = np.random.default_rng(0)
    written = {}
    for sample_id in ids[:-1]:
        label = cache.load(sample_id)
        assert label is not None
        written[sample_id] = generator.integers(0, 21, size=label.shape, dtype=np.uint8)
        write_label(folder / f"{sample_id}.png", written[sample_id], voc_palette())
    return written


def test_dataset_fields_equal_the_cache(fo: Any, tmp_path: Path) -> None:
    from fiftyone import ViewField as F

    config, cache, ids = review_setup(tmp_path)
    predictions = tmp_path / "predictions"
    predictions.mkdir()
    predicted = _predictions(predictions, cache, ids)
    corrected = np.full(tuple(cache.load(ids[2]).shape), VOC.label_id("dog"), dtype=np.uint8)  # type: ignore[union-attr]
    layer = CorrectionsLayer(corrections_dir(cache.root, cache.dataset))
    layer.store_all({ids[2]: corrected}, {ids[2]: {"tool": "test"}}, {"tool": "test"})
    args = ["review", "--fiftyone", "--config", str(config), "--name", "fields"]
    assert main([*args, "--predictions", str(predictions)]) == 0

    dataset = fo.load_dataset("fields")
    samples = list(dataset)
    assert len(samples) == len(ids)
    queue_ = rank_cache(cache, list(VOC.class_names))
    assert [s.wsss_pl_id for s in samples] == [e.id for e in queue_]  # worst first
    source_dataset = SyntheticVOC(str(tmp_path / "data"), num_train=4, num_val=1, image_size=SIZE)
    source_dataset = source_dataset.dataset("train")
    for rank, (sample, entry) in enumerate(zip(samples, queue_, strict=True), start=1):
        sample_id = sample.wsss_pl_id
        label = cache.load(sample_id)
        metadata = cache.load_metadata(sample_id)
        assert label is not None and metadata is not None
        np.testing.assert_array_equal(sample.pseudo_label.mask, label.numpy())
        gt = source_dataset.load_gt(sample_id)
        assert gt is not None
        np.testing.assert_array_equal(sample.ground_truth.mask, gt.numpy())
        if sample_id in predicted:
            np.testing.assert_array_equal(sample.prediction.mask, predicted[sample_id])
        else:
            assert sample.prediction is None
        if sample_id == ids[2]:
            np.testing.assert_array_equal(sample.correction.mask, corrected)
        else:
            assert sample.correction is None
        assert Path(sample.filepath) == source_dataset.image_path(sample_id).resolve()
        height, width = label.shape
        instances = metadata["instances"]
        detections = sample.detections.detections
        assert [d.label for d in detections] == [i["class"] for i in instances]
        assert [d.confidence for d in detections] == pytest.approx([i["score"] for i in instances])
        for detection, inst in zip(detections, instances, strict=True):
            x, y, w, h = detection.bounding_box
            back = [x * width, y * height, (x + w) * width, (y + h) * height]
            assert back == pytest.approx(inst["box"], abs=1e-6)
            assert detection.phrase == inst["phrase"]
        assert sample.queue_score == pytest.approx(entry.score)
        assert sample.queue_rank == rank and sample.queue_reason == entry.reason
        assert sample.missing_classes == metadata["missing_classes"]
        assert sample.classes == source_dataset.image_labels(sample_id)
    assert dataset.default_mask_targets[VOC.label_id("person")] == "person"
    assert dataset.default_mask_targets[255] == "ignore"
    colours = {
        c["intTarget"]: c["color"]
        for c in dataset.app_config.color_scheme.default_mask_targets_colors
    }
    r, g, b = voc_palette()[3 * 15 : 3 * 16]
    assert colours[15] == f"#{r:02x}{g:02x}{b:02x}"
    assert dataset.app_config.active_fields.paths == ["pseudo_label", "detections"]
    assert dataset.load_saved_view("review queue").first().queue_rank == 1
    # "<class>, queue score > x" in the App is this view: the expected ids come from the cache.
    name = samples[0].detections.detections[0].label
    threshold = float(np.median([e.score for e in queue_]))
    view = dataset.filter_labels("detections", F("label") == name).match(
        F("queue_score") > threshold
    )
    expected = {
        e.id
        for e in queue_
        if e.score > threshold
        and any(i["class"] == name for i in cache.load_metadata(e.id)["instances"])  # type: ignore[index]
    }
    assert expected and set(view.values("wsss_pl_id")) == expected


def test_bad_input(fo: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config, cache, ids = review_setup(tmp_path)
    base = ["review", "--fiftyone", "--name", "bad"]

    assert main([*base, "--config", str(tmp_path / "nope.yaml")]) == 2
    assert f"config file {tmp_path / 'nope.yaml'} does not exist" in capsys.readouterr().err
    assert main(["review", "--config", str(config)]) == 2
    assert "give --fiftyone" in capsys.readouterr().err

    empty = PseudoLabelCache(
        tmp_path / "empty", "synthetic", {"classes": list(VOC.class_names)}, voc_palette()
    )
    empty.open()
    assert main([*base, "--cache", str(empty.directory), "--images", str(tmp_path)]) == 2
    assert "holds no labels" in capsys.readouterr().err
    assert not fo.dataset_exists("bad")

    wrong = tmp_path / "wrong"
    wrong.mkdir()
    write_label(wrong / f"{ids[0]}.png", torch.zeros(7, 9, dtype=torch.uint8), voc_palette())
    assert main([*base, "--config", str(config), "--predictions", str(wrong)]) == 2
    err = capsys.readouterr().err
    assert f"prediction {wrong / (ids[0] + '.png')} is (7, 9)" in err and ids[0] in err
    assert not fo.dataset_exists("bad")

    unrelated = tmp_path / "unrelated"
    unrelated.mkdir()
    write_label(unrelated / "other_id.png", torch.zeros(7, 9, dtype=torch.uint8), voc_palette())
    assert main([*base, "--config", str(config), "--predictions", str(unrelated)]) == 2
    assert f"--predictions {unrelated} has no <id>.png for any of the 4" in capsys.readouterr().err
    assert main([*base, "--config", str(config), "--stage", "val"]) == 2
    err = capsys.readouterr().err
    assert f"is not in the val split of {config}" in err  # the cache is train's
    assert not fo.dataset_exists("bad")

    assert main([*base, "--config", str(config)]) == 0
    capsys.readouterr()
    marked = fo.load_dataset("bad").first()
    marked.tags.append("reviewed")  # a reviewer's tag: only --overwrite may drop it
    marked.save()
    assert main([*base, "--config", str(config)]) == 2
    assert "FiftyOne dataset 'bad' exists; pass --overwrite" in capsys.readouterr().err
    assert fo.load_dataset("bad").count_sample_tags() == {"reviewed": 1}  # untouched
    assert main([*base, "--config", str(config), "--overwrite"]) == 0
    assert fo.load_dataset("bad").count_sample_tags() == {}
    assert len(fo.load_dataset("bad")) == len(ids)

    # --cache with --images instead of --config: the images come from that folder.
    by_folder = ["review", "--fiftyone", "--cache", str(cache.directory), "--name", "folder"]
    assert main([*by_folder, "--images", str(tmp_path)]) == 2
    assert f"--images {tmp_path} has no image file" in capsys.readouterr().err
    images = SyntheticVOC(str(tmp_path / "data"), num_train=4, num_val=1, image_size=SIZE)
    folder = images.dataset("train").image_path(ids[0]).parent
    assert main([*by_folder, "--images", str(folder)]) == 0
    shown = fo.load_dataset("folder")
    assert sorted(Path(p).parent for p in shown.values("filepath")) == [folder.resolve()] * len(ids)
    assert "ground_truth" not in shown.get_field_schema()  # no dataset: no ground truth


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _stop_services(port: int) -> None:
    """End the FiftyOne App server processes this test started (found by their --port)."""
    import psutil

    for process in psutil.process_iter(["pid", "cmdline"]):
        cmdline = process.info["cmdline"] or []
        if "--51-service" in cmdline and str(port) in cmdline:
            for child in process.children(recursive=True):
                child.kill()
            process.kill()


@pytest.mark.slow
def test_app_opens_in_headless_chromium(fo: Any, tmp_path: Path) -> None:
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"{CHROMIUM} absent: apt-get install chromium to screenshot the FiftyOne App")
    config, _, ids = review_setup(tmp_path)
    port = _free_port()
    command = [sys.executable, "-m", "wsss_pl", "review", "--fiftyone", "--config", str(config),
               "--name", "app-test", "--launch", "--port", str(port)]  # fmt: skip
    # HOME too: the App writes ~/.fiftyone/var (its welcome note).
    env = {**os.environ, "HOME": str(tmp_path / "home")}
    app = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in app.stdout], daemon=True).start()  # type: ignore[union-attr]
    output, url = [], None
    try:
        deadline = time.monotonic() + 75
        while url is None and time.monotonic() < deadline and app.poll() is None:
            try:
                line = lines.get(timeout=1)
            except queue.Empty:
                continue
            output.append(line)
            if line.startswith("FiftyOne App: "):
                url = line.split()[2]
        assert url == f"http://127.0.0.1:{port}/", "".join(output)
        shot = tmp_path / "fiftyone_app.png"
        chrome = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1400,900",
                  "--virtual-time-budget=15000"]  # fmt: skip
        subprocess.run(
            [*chrome, f"--screenshot={shot}", url], capture_output=True, timeout=60, check=True
        )
        dom = subprocess.run(
            [*chrome, "--dump-dom", url], capture_output=True, text=True, timeout=60, check=True
        ).stdout
    finally:
        app.send_signal(signal.SIGTERM)
        try:
            app.wait(timeout=20)
        except subprocess.TimeoutExpired:
            app.kill()
        _stop_services(port)
    for shown in (">app-test<", "queue_score", "pseudo_label", "ground_truth", "detections"):
        assert shown in dom, f"{shown} not on the App page"
    from PIL import Image

    with Image.open(shot) as image:
        pixels = np.asarray(image.convert("RGB"))
    assert pixels.shape == (900, 1400, 3) and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50
    keep = os.environ.get("WSSS_PL_SCREENSHOT_DIR")  # e.g. to show the page to a person
    if keep:
        shutil.copy(shot, Path(keep) / shot.name)
    assert len(fo.load_dataset("app-test")) == len(ids)
