"""Corrections round trip without a server: export-review -> a reviewer's edit -> import-labels
-> the training labels; COCO (CVAT) the same way; bad review files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from review_fixtures import review_setup, reviewer_edit, training_target

from wsss_pl.classes import VOC
from wsss_pl.cli import main
from wsss_pl.corrections import brush
from wsss_pl.labeling.storage.cache import PseudoLabelCache


@pytest.fixture()
def setup(tmp_path: Path) -> tuple[Path, PseudoLabelCache, list[str]]:
    return review_setup(tmp_path)


def export_tasks(cache: PseudoLabelCache, out: Path, ids: list[str]) -> list[dict]:
    args = ["--cache", str(cache.directory), "--output", str(out), "--ids", ",".join(ids)]
    assert main(["export-review", *args]) == 0
    return json.loads(out.read_text())


def as_export(tasks: list[dict], results: dict[str, list[dict]]) -> list[dict]:
    """Label Studio's JSON export shape: tasks with annotations (only the reviewed ones)."""
    exported = []
    for number, task in enumerate(tasks, start=1):
        item = {"id": number, "data": task["data"], "predictions": task["predictions"]}
        result = results.get(task["data"]["wsss_pl_id"])
        item["annotations"] = (
            [{"id": 100 + number, "result": result, "was_cancelled": False, "completed_by": 1}]
            if result is not None
            else []
        )
        exported.append(item)
    return exported


def test_brush_rle_round_trips_masks_with_long_runs() -> None:
    rng = np.random.default_rng(0)
    for height, width in ((1, 1), (7, 5), (300, 300)):
        mask = rng.random((height, width)) < 0.3
        mask[: height // 2] = True  # a run longer than 2**16 values on 300x300
        assert np.array_equal(brush.decode(brush.encode(mask), height, width), mask)
    with pytest.raises(brush.BrushRLEError, match="needs"):
        brush.decode(brush.encode(mask), 299, 300)
    with pytest.raises(brush.BrushRLEError, match="truncated"):
        brush.decode(brush.encode(mask)[:-40], 300, 300)


def test_label_studio_round_trip_changes_training_labels_exactly_where_reviewed(
    setup: tuple[Path, PseudoLabelCache, list[str]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config, cache, ids = setup
    tasks = export_tasks(cache, tmp_path / "tasks.json", ids)
    assert (tmp_path / "tasks_label_config.xml").read_text().count("<Label ") == 21
    # The pre-annotations paint exactly the cached labels.
    for task in tasks:
        sample_id = task["data"]["wsss_pl_id"]
        cached = cache.load(sample_id)
        assert cached is not None
        painted = np.zeros(cached.shape, dtype=np.uint8)
        for region in task["predictions"][0]["result"]:
            mask = brush.decode(region["value"]["rle"], *cached.shape)
            assert not painted[mask].any()  # regions never overlap
            painted[mask] = VOC.label_id(region["value"]["brushlabels"][0])
        assert np.array_equal(painted, cached.numpy())
    edited_task = next(t for t in tasks if len(t["predictions"][0]["result"]) >= 2)
    edited = edited_task["data"]["wsss_pl_id"]
    cached = cache.load(edited)
    assert cached is not None
    result, expected = reviewer_edit(edited_task, cached)
    export = tmp_path / "export.json"
    export.write_text(json.dumps(as_export(tasks, {edited: result})))
    assert main(["import-labels", str(export), "--config", str(config)]) == 0
    corrections = cache.root / cache.dataset / "corrections"
    assert sorted(p.name for p in corrections.glob("*.png")) == [f"{edited}.png"]
    provenance = json.loads((corrections / f"{edited}.json").read_text())
    assert provenance["sha256"] == __import__("hashlib").sha256(export.read_bytes()).hexdigest()
    assert (
        provenance["source_file"] == str(export.resolve()) and provenance["tool"] == "label-studio"
    )
    target = training_target(config, cache, edited)
    assert torch.equal(target, expected)
    assert not torch.equal(target, cached)
    for other in ids:  # not reviewed: trained on the pseudo-label as before
        if other != edited:
            assert torch.equal(training_target(config, cache, other), cache.load(other))
    # The cache itself is untouched; a second import of the same id needs --overwrite.
    assert torch.equal(cache.load(edited), cached)
    assert main(["import-labels", str(export), "--config", str(config)]) == 2
    assert main(["import-labels", str(export), "--config", str(config), "--overwrite"]) == 0
    # evaluate-labels scores the pseudo-labels against the corrections (how much changed).
    capsys.readouterr()
    args = ["--pred", str(cache.directory), "--gt", str(corrections), "--workers", "0"]
    assert main(["evaluate-labels", *args, "--format", "json", "--no_progress"]) == 0
    scored = json.loads(capsys.readouterr().out)
    assert scored["num_images"] == 1 and 0 < scored["miou"] < 100


def test_coco_round_trip_for_cvat(
    setup: tuple[Path, PseudoLabelCache, list[str]], tmp_path: Path
) -> None:
    config, cache, ids = setup
    out = tmp_path / "cvat.json"
    args = ["--cache", str(cache.directory), "--output", str(out), "--format", "coco"]
    assert main(["export-review", *args, "--ids", f"{ids[0]},{ids[1]}"]) == 0
    coco = json.loads(out.read_text())
    assert [i["wsss_pl_id"] for i in coco["images"]] == [ids[0], ids[1]]
    dog = next(c["id"] for c in coco["categories"] if c["name"] == "dog")
    coco["annotations"][0]["category_id"] = dog  # the reviewer's class change
    changed = coco["annotations"][0]
    out.write_text(json.dumps(coco))
    assert main(["import-labels", str(out), "--config", str(config)]) == 0
    from pycocotools import mask as mask_utils

    segmentation = dict(changed["segmentation"], counts=changed["segmentation"]["counts"].encode())
    region = torch.from_numpy(mask_utils.decode(segmentation).astype(bool))
    image_id = {i["id"]: i["wsss_pl_id"] for i in coco["images"]}[changed["image_id"]]
    expected = cache.load(image_id)
    assert expected is not None
    expected[region] = VOC.label_id("dog")
    assert torch.equal(training_target(config, cache, image_id), expected)


def _bad(kind: str, tasks: list[dict]) -> tuple[str, str]:
    """(export text, expected message part) for one kind of bad review file."""
    task = json.loads(json.dumps(tasks[1]))
    region = task["predictions"][0]["result"][0]
    result = [region]
    message = {
        "unknown label": "label 'giraffe' is not a class of this dataset",
        "unknown id": "id 'not_an_id' is not in the train split",
        "overlap": "overlaps a region of another class",
        "wrong size": "a 40x56 image needs",
        "truncated": "is not complete JSON (truncated?)",
    }[kind]
    if kind == "unknown label":
        region["value"]["brushlabels"] = ["giraffe"]
    elif kind == "unknown id":
        task["data"]["wsss_pl_id"] = "not_an_id"
    elif kind == "overlap":
        other = json.loads(json.dumps(region))
        other["value"]["brushlabels"] = [
            "horse" if region["value"]["brushlabels"] != ["horse"] else "cow"
        ]
        result.append(other)
    elif kind == "wrong size":
        region["value"]["rle"] = brush.encode(np.ones((10, 10), dtype=bool))
    export = as_export([task], {task["data"]["wsss_pl_id"]: result})
    text = json.dumps(export)
    return (text[: len(text) // 2] if kind == "truncated" else text), message


@pytest.mark.parametrize(
    "kind", ["unknown label", "unknown id", "overlap", "wrong size", "truncated"]
)
def test_bad_review_files_are_one_line_and_lose_nothing(
    setup: tuple[Path, PseudoLabelCache, list[str]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    kind: str,
) -> None:
    config, cache, ids = setup
    tasks = export_tasks(cache, tmp_path / "tasks.json", ids)
    good = tmp_path / "good.json"
    first = tasks[0]
    good.write_text(json.dumps(as_export([first], {ids[0]: first["predictions"][0]["result"]})))
    assert main(["import-labels", str(good), "--config", str(config)]) == 0
    corrections = cache.root / cache.dataset / "corrections"
    before = {p.name: p.read_bytes() for p in corrections.iterdir()}
    cache_before = {p.name: p.read_bytes() for p in cache.directory.iterdir()}
    bad = tmp_path / "bad.json"
    text, message = _bad(kind, tasks)
    bad.write_text(text)
    capsys.readouterr()
    assert main(["import-labels", str(bad), "--config", str(config), "--overwrite"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(bad) in err and message in err
    if kind not in ("truncated", "unknown id"):
        assert f"id {ids[1]!r}" in err
    assert {p.name: p.read_bytes() for p in corrections.iterdir()} == before
    assert {p.name: p.read_bytes() for p in cache.directory.iterdir()} == cache_before


@pytest.mark.parametrize(
    ("command", "extra", "message"),
    [
        ("export-review", ["--ids", "nope"], "has no label for id 'nope'"),
        ("export-review", ["--queue", "{tmp}/none.csv"], "none.csv does not exist"),
        ("export-review", ["--output", "{tmp}/exists.json"], "exists.json exists"),
        ("export-review", ["--cache", "{tmp}"], "is not a pseudo-label cache"),
        ("import-labels", ["{tmp}/other.json"], "neither a Label Studio JSON export"),
        ("import-labels", ["{tmp}/missing.json"], "missing.json does not exist"),
        ("import-labels", ["{tmp}/empty.json"], "no annotated task/image"),
    ],
)
def test_bad_command_input_is_one_line(
    setup: tuple[Path, PseudoLabelCache, list[str]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    command: str,
    extra: list[str],
    message: str,
) -> None:
    config, cache, _ = setup
    (tmp_path / "exists.json").write_text("{}")
    (tmp_path / "other.json").write_text('{"tasks": []}')
    (tmp_path / "empty.json").write_text("[]")
    extra = [a.format(tmp=tmp_path) for a in extra]
    if command == "export-review":
        args = ["--cache", str(cache.directory), "--output", str(tmp_path / "out.json"), *extra]
    else:
        args = [*extra, "--config", str(config)]
    assert main([command, *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err
    assert not (tmp_path / "out.json").exists()
    assert not (cache.root / cache.dataset / "corrections").exists()
