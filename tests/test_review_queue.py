"""``review-queue``: cached labels ranked by warning signs, without ground truth."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from review_fixtures import instance, review_setup

from wsss_pl.classes import VOC, voc_palette
from wsss_pl.cli import main
from wsss_pl.labeling.storage.cache import PseudoLabelCache
from wsss_pl.review_queue import image_signals, recall_of_worst


@pytest.fixture()
def queue_setup(tmp_path: Path) -> tuple[Path, PseudoLabelCache, list[str]]:
    return review_setup(tmp_path)


def test_review_queue_ranks_each_defect_above_the_clean_label(
    queue_setup: tuple[Path, PseudoLabelCache, list[str]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config, _, ids = queue_setup
    out = tmp_path / "queue"
    weights = ["--weights", "unmatched_boxes=0.5"]  # 0 in the defaults (no gain in the simulation)
    assert (
        main(
            [
                "review-queue",
                "--config",
                str(config),
                "--output_dir",
                str(out),
                "--top",
                "2",
                *weights,
            ]
        )
        == 0
    )
    lines = (out / "queue.csv").read_text().splitlines()
    assert lines[0].startswith("rank,id,score,reason,missing_class")
    rows = [line.split(",") for line in lines[1:]]
    assert len(rows) == 4
    ranked = [row[1] for row in rows]
    assert ranked[-1] == ids[0]  # the only clean label comes last
    reasons = {row[1]: ",".join(row[3:-7]) for row in rows}
    assert reasons[ids[0]] == "no warning sign"
    assert "no box for" in reasons[ids[1]]
    overlap = {row[1]: float(row[-3]) for row in rows}  # the "overlap" column
    assert overlap[ids[2]] > 0 and overlap[ids[0]] == overlap[ids[1]] == overlap[ids[3]] == 0
    assert "tvmonitor covers 0.0% of the image" in reasons[ids[2]]  # painted over: no pixel
    assert "6 of" in reasons[ids[3]] and "matched no class" in reasons[ids[3]]
    composites = sorted(p.name for p in (out / "composites").iterdir())
    assert composites == [f"rank0001_{ranked[0]}.png", f"rank0002_{ranked[1]}.png"]
    printed = capsys.readouterr().out
    first_line = next(line for line in printed.splitlines() if line.startswith("   1  "))
    assert first_line.split()[1:3] == [f"{float(rows[0][2]):.3f}", ranked[0]]
    # A second run does not replace the queue without --overwrite.
    assert main(["review-queue", "--config", str(config), "--output_dir", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    stale = out / "composites" / "rank0009_old.png"
    stale.write_bytes(b"")
    assert (
        main(["review-queue", "--config", str(config), "--output_dir", str(out), "--overwrite"])
        == 0
    )
    assert not stale.exists() and len(list((out / "composites").iterdir())) == 4


def test_second_labeller_disagreement_moves_an_image_up(
    queue_setup: tuple[Path, PseudoLabelCache, list[str]], tmp_path: Path
) -> None:
    config, cache, ids = queue_setup
    second = PseudoLabelCache(
        tmp_path / "second",
        cache.dataset,
        {"classes": list(VOC.class_names), "x": 1},
        voc_palette(),
    )
    second.open()
    for sample_id in ids:
        label, metadata = cache.load(sample_id), cache.load_metadata(sample_id)
        assert label is not None and metadata is not None
        if sample_id == ids[0]:
            label = torch.full_like(label, 7)  # the second labeller says "car" everywhere
        second.store(sample_id, label, metadata)
    out = tmp_path / "queue2"
    args = ["review-queue", "--cache", str(cache.directory), "--output_dir", str(out)]
    assert (
        main([*args, "--second_cache", str(second.directory), "--weights", "disagreement=50"]) == 0
    )
    first = (out / "queue.csv").read_text().splitlines()[1].split(",")
    assert first[1] == ids[0] and "second labeller differs" in first[3]


def test_signals_values_follow_the_metadata() -> None:
    mask_a = torch.zeros(10, 10, dtype=torch.bool)
    mask_a[0:5, 0:10] = True
    mask_b = torch.zeros(10, 10, dtype=torch.bool)
    mask_b[3:10, 0:10] = True  # rows 3-4 claimed by both classes
    inst_b = instance(mask_b, 12, score=0.5)
    inst_b["box"] = [0.0, 3.0, 10.0, 6.5]  # the mask leaks out of its box: box IoU 3.5/7
    label = (mask_a.to(torch.uint8) * 8).numpy()
    label[5:] = 12
    metadata = {"instances": [instance(mask_a, 8, score=0.9), inst_b],
                "missing_classes": ["bird", "cow"], "num_unmatched_boxes": 2}  # fmt: skip
    values, why = image_signals(metadata, label, VOC.class_names)
    assert values["missing_class"] == pytest.approx(2 / 4)  # cat, dog detected; bird, cow not
    assert values["unmatched_boxes"] == pytest.approx(2 / 4)
    assert values["low_score"] == pytest.approx(1 - 0.7)
    assert values["mask_box_fit"] == pytest.approx(1 - (1 + 3.5 / 7) / 2)
    assert values["overlap"] == pytest.approx(20 / 100)
    assert values["area_extreme"] == 0.0
    assert "disagreement" not in values
    assert why["missing_class"] == "no box for bird, cow"


def test_recall_of_worst_counts_the_worst_found_at_the_top() -> None:
    ious = np.linspace(0.0, 1.0, 20)  # image 0 and 1 are the worst
    assert recall_of_worst(-ious, ious) == 1.0
    assert recall_of_worst(ious, ious) == 0.0
    scores = np.zeros(20)
    scores[[0, 19]] = 1.0
    assert recall_of_worst(scores, ious) == 0.5
    with pytest.raises(ValueError, match="as many scores"):
        recall_of_worst([1.0], [0.1, 0.2])


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "give --config"),
        (["--cache", "{tmp}/nowhere"], "not a pseudo-label cache"),
        (["--cache", "{cache}", "--weights", "overlap"], "must be SIGNAL=NUMBER"),
        (["--cache", "{cache}", "--weights", "bogus=1"], "SIGNAL one of"),
        (["--cache", "{cache}", "--weights", "overlap=-1"], "overlap must be >= 0"),
        (["--cache", "{cache}", "--top", "-1"], "--top must be >= 0"),
        (["--config", "{tmp}/missing.yaml"], "missing.yaml does not exist"),
    ],
)
def test_bad_input_is_one_line(
    queue_setup: tuple[Path, PseudoLabelCache, list[str]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    message: str,
) -> None:
    _, cache, _ = queue_setup
    args = [a.format(tmp=tmp_path, cache=cache.directory) for a in extra]
    assert main(["review-queue", "--output_dir", str(tmp_path / "q"), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "q" / "queue.csv").exists()


def test_config_with_two_caches_asks_which(
    queue_setup: tuple[Path, PseudoLabelCache, list[str]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config, cache, _ = queue_setup
    other = PseudoLabelCache(cache.root, cache.dataset, {"classes": ["x"]}, voc_palette())
    other.open()
    assert main(["review-queue", "--config", str(config), "--output_dir", str(tmp_path / "q")]) == 2
    err = capsys.readouterr().err
    assert "2 caches under" in err and "--cache" in err
    args = [
        "--config",
        str(config),
        "--cache",
        str(cache.directory),
        "--output_dir",
        str(tmp_path / "q"),
    ]
    assert main(["review-queue", *args]) == 0
