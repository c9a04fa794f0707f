"""The reproduction's results table: the paper's numbers (``PAPER``) and ours beside them, as
markdown (``results.md``) and JSON (``results.json``). The stages that fill ``results`` live in
``wsss_pl.reproduce_stages``."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Target:
    """One number of the paper's tables and where ours comes from."""

    key: str
    description: str
    paper: float | None


# Sun et al. 2023, "An Alternative to WSSS?": Tables 1 and 3 (Grounding DINO Swin-T + SAM ViT-H,
# DeepLab-v2 ResNet-101).
PAPER: dict[str, tuple[Target, ...]] = {
    "voc": (
        Target("pseudo_train", "pseudo-labels, VOC 2012 train (1,464)", 88.3),
        Target("pseudo_train_aug", "pseudo-labels, VOC 2012 train_aug (10,582)", None),
        Target("val", "DeepLab-v2 R101, VOC 2012 val, final step (MS + CRF)", 77.2),
        Target(
            "val_selected_on_val",
            "same, best-val-mIoU checkpoint (selected on val: optimistic, not the paper's)",
            None,
        ),
        Target("test", "DeepLab-v2 R101, VOC 2012 test, final step (evaluation server)", 77.1),
    ),
    "coco": (
        Target("pseudo_train", "pseudo-labels, COCO 2014 train", 66.8),
        Target("val", "DeepLab-v2 R101, COCO 2014 val, final step (MS)", 55.6),
        Target(
            "val_selected_on_val",
            "same, best-val-mIoU checkpoint (selected on val: optimistic, not the paper's)",
            None,
        ),
    ),
}


def write_table(
    out: Path, dataset: str, results: dict[str, Any], dry_run: bool, config: Path
) -> str:
    """Markdown table of ours beside the paper's numbers (``PAPER[dataset]``), also written to
    ``out/results.md``; ``out/results.json`` gets the rows, ``results`` and the config's path."""
    rows = ["| result | paper | ours | ours - paper |", "|---|---:|---:|---:|"]
    records = []
    for target in PAPER[dataset]:
        ours = results.get(target.key)
        if target.key == "test" and ours is None and "test_predictions" in results:
            ours_text = "upload results.tar.gz"
        else:
            ours_text = "-" if ours is None else f"{ours:.1f}"
        paper_text = "-" if target.paper is None else f"{target.paper:.1f}"
        delta = (
            f"{ours - target.paper:+.1f}"
            if ours is not None and target.paper is not None and not math.isnan(ours)
            else "-"
        )
        rows.append(f"| {target.description} | {paper_text} | {ours_text} | {delta} |")
        records.append({"key": target.key, "description": target.description,
                        "paper": target.paper, "ours": ours})  # fmt: skip
    note = (
        "\nHeadline rows use the final step's weights (the paper's protocol); the "
        "best-val-mIoU checkpoint is chosen on the split it is scored on.\n"
    )
    if dry_run:
        note += (
            "\n_dry run: tiny random models on synthetic data; the numbers test the plumbing, "
            "not the method._\n"
        )
    markdown = f"## Reproduction: {dataset} (mIoU, %)\n\n" + "\n".join(rows) + "\n" + note
    (out / "results.md").write_text(markdown)
    payload = {"dataset": dataset, "dry_run": dry_run, "rows": records,
               "details": results, "config": str(config)}  # fmt: skip
    (out / "results.json").write_text(json.dumps(payload, indent=1))
    return markdown
