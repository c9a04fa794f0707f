"""The corrections round trip against a REAL local Label Studio server: export-review's tasks
imported through its API, a reviewer's annotation written through its API (a class changed, an
instance deleted, a region added), its JSON export read back by import-labels, and the training
labels changed exactly there."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from label_studio_server import LabelStudio, executable
from review_fixtures import review_setup, reviewer_edit, training_target

from wsss_pl.cli import main
from wsss_pl.corrections import brush

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabelStudio]:
    program = executable()
    if program is None:
        pytest.skip(
            "label-studio is not installed: set WSSS_PL_LABEL_STUDIO to its executable "
            "(.ci/run makes a venv with it)"
        )
    server = LabelStudio(program, tmp_path_factory.mktemp("label_studio"))
    try:
        yield server
    finally:
        server.stop()


def test_round_trip_through_a_real_label_studio(label_studio: LabelStudio, tmp_path: Path) -> None:
    config, cache, ids = review_setup(tmp_path)
    tasks_file = tmp_path / "tasks.json"
    args = ["--cache", str(cache.directory), "--output", str(tasks_file)]
    assert main(["export-review", *args, "--ids", ",".join(ids)]) == 0
    interface = (tmp_path / "tasks_label_config.xml").read_text()
    project = label_studio.call(
        "POST", "/api/projects", {"title": "wsss_pl review", "label_config": interface}
    )
    pid = project["id"]
    label_studio.call("POST", f"/api/projects/{pid}/import", json.loads(tasks_file.read_text()))
    listed = label_studio.call(
        "GET", f"/api/projects/{pid}/export?exportType=JSON&download_all_tasks=true"
    )
    stored = [label_studio.call("GET", f"/api/tasks/{t['id']}") for t in listed]
    assert sorted(t["data"]["wsss_pl_id"] for t in stored) == sorted(ids)
    # The server kept the pre-annotations as we wrote them.
    sent = {t["data"]["wsss_pl_id"]: t for t in json.loads(tasks_file.read_text())}
    for kept in stored:
        ours = sent[kept["data"]["wsss_pl_id"]]["predictions"][0]["result"]
        assert [r["value"] for r in kept["predictions"][0]["result"]] == [r["value"] for r in ours]
    task = next(t for t in stored if len(t["predictions"][0]["result"]) >= 2)
    sample_id = task["data"]["wsss_pl_id"]
    cached = cache.load(sample_id)
    assert cached is not None
    result, expected = reviewer_edit(task, cached)
    label_studio.call(
        "POST", f"/api/tasks/{task['id']}/annotations", {"result": result, "was_cancelled": False}
    )
    exported = label_studio.call(
        "GET", f"/api/projects/{pid}/export?exportType=JSON&download_all_tasks=true"
    )
    export_file = tmp_path / "export.json"
    export_file.write_text(json.dumps(exported))
    assert main(["import-labels", str(export_file), "--config", str(config)]) == 0
    corrections = cache.root / cache.dataset / "corrections"
    assert [p.name for p in corrections.glob("*.png")] == [f"{sample_id}.png"]
    target = training_target(config, cache, sample_id)
    assert torch.equal(target, expected)
    changed = (target != cached).numpy()
    assert changed.any()
    # Label Studio's own decoder reads our RLE as we do (the documented format, both ways).
    rle = next(r for r in exported if r["id"] == task["id"])["annotations"][0]["result"][-1][
        "value"
    ]["rle"]
    python = Path(executable() or "").with_name("python")
    code = ("import json,sys; from label_studio_sdk.converter.brush import decode_rle; "
            "a=decode_rle(json.load(sys.stdin)); print(json.dumps(a.tolist()))")  # fmt: skip
    decoded = subprocess.run(
        [str(python), "-c", code], input=json.dumps(rle), capture_output=True, text=True, check=True
    )
    theirs = (
        np.asarray(json.loads(decoded.stdout), dtype=np.uint8).reshape(*cached.shape, 4)[:, :, 3]
        > 0
    )
    assert np.array_equal(theirs, brush.decode(rle, *cached.shape))
    assert theirs[:6, :6].all() and theirs.sum() == 36  # the reviewer's added square
