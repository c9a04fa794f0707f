"""compare-labels' output: the markdown table (quality, speed, memory, boxes; per-class IoU;
the most disputed images) and the optional W&B run with its side-by-side panel. Used by
``wsss_pl.compare_labels``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from wsss_pl.classes import IGNORE_INDEX
from wsss_pl.compare_stats import LabellerStats, _iou


def _fmt(value: float | None, digits: int = 1, scale: float = 1.0) -> str:
    if value is None or not np.isfinite(value):
        return "-"
    return f"{value * scale:.{digits}f}"


def report(
    all_stats: list[LabellerStats],
    class_names: list[str],
    disputed: list[dict[str, Any]],
    ids: list[str],
) -> tuple[str, dict[str, Any]]:
    """Markdown tables and the JSON record of a comparison."""
    names = ["background", *class_names]
    summary = []
    for stats in all_stats:
        iou = (
            _iou(stats.confusion[:, :-1], stats.confusion[:, -1])
            if stats.confusion is not None
            else None
        )
        counted = max(stats.counted, 1)
        summary.append(
            {
                "labeller": stats.name,
                "fingerprint": stats.fingerprint,
                "mIoU": None if iou is None else float(np.nanmean(iou)),
                "per_class_iou": None if iou is None else {n: (None if np.isnan(v) else float(v)) for n, v in zip(names, iou, strict=True)},
                "images_per_second": stats.images_per_second,
                "peak_memory_mib": stats.peak_memory_mib,
                "memory_kind": stats.memory_kind,
                "load_seconds": stats.load_seconds,
                "labelled_now": stats.labelled_now,
                "boxes_per_image": stats.boxes / counted,
                "unmatched_per_image": stats.unmatched / counted,
                "missing_classes_per_image": stats.missing / counted,
                "images_with_gt": len(stats.per_image_iou),
            }
        )  # fmt: skip
    lines = [
        f"## Pseudo-labels of {len(ids)} images",
        "",
        "| labeller | mIoU (%) | img/s | peak memory (MiB) | boxes / img | unmatched / img | classes without box / img | labelled now |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]  # fmt: skip
    for row in summary:
        lines.append(
            f"| {row['labeller']} | {_fmt(row['mIoU'], 1, 100)} | {_fmt(row['images_per_second'], 2)} "
            f"| {_fmt(row['peak_memory_mib'], 0)} | {_fmt(row['boxes_per_image'], 2)} "
            f"| {_fmt(row['unmatched_per_image'], 2)} | {_fmt(row['missing_classes_per_image'], 2)} "
            f"| {row['labelled_now']} |"
        )
    kinds = sorted({r["memory_kind"] for r in summary if r["memory_kind"]})
    lines += [
        "",
        f"Memory: {', '.join(kinds) or 'not measured (all cached)'}. mIoU over {summary[0]['images_with_gt']} images with ground truth; ignore pixels count as misses.",
    ]
    if any(r["per_class_iou"] for r in summary):
        lines += [
            "",
            "### IoU per class (%)",
            "",
            "| class | " + " | ".join(r["labeller"] for r in summary) + " |",
            "|---|" + "---:|" * len(summary),
        ]
        for name in names:
            cells = [_fmt((r["per_class_iou"] or {}).get(name), 1, 100) for r in summary]
            if any(c != "-" for c in cells):
                lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if disputed:
        lines += [
            "",
            "### Images where the labellers disagree most",
            "",
            "| id | differing pixels (%) | "
            + " | ".join(f"IoU {s.name} (%)" for s in all_stats)
            + " |",
            "|---|---:|" + "---:|" * len(all_stats),
        ]
        for row in disputed:
            cells = [_fmt(s.per_image_iou.get(row["id"]), 1, 100) for s in all_stats]
            lines.append(
                f"| {row['id']} | {row['disagreement'] * 100:.1f} | " + " | ".join(cells) + " |"
            )
    record = {"ids": ids, "labellers": summary, "disagreements": disputed}
    return "\n".join(lines) + "\n", record  # fmt: skip


def log_wandb(
    settings: dict[str, Any],
    record: dict[str, Any],
    labellers: dict[str, Any],
    dataset: Any,
    class_names: list[str],
    output_dir: Path,
) -> str:
    """A W&B run with the summary and per-class tables and the side-by-side panel; its dir."""
    import wandb

    settings = {"project": "wsss_pl-compare", "dir": str(output_dir), **settings}
    Path(settings["dir"]).mkdir(parents=True, exist_ok=True)
    run = wandb.init(**settings)
    columns = ["labeller", "mIoU", "images_per_second", "peak_memory_mib", "boxes_per_image", "unmatched_per_image", "missing_classes_per_image"]  # fmt: skip
    summary = wandb.Table(
        columns=columns, data=[[r[c] for c in columns] for r in record["labellers"]]
    )
    names = ["background", *class_names]
    per_class = wandb.Table(
        columns=["class", *[r["labeller"] for r in record["labellers"]]],
        data=[
            [n, *[(r["per_class_iou"] or {}).get(n) for r in record["labellers"]]] for n in names
        ],
    )
    id_names = {i: n for i, n in enumerate(names)} | {IGNORE_INDEX: "ignore"}
    panel_ids = [r["id"] for r in record["disagreements"]] or record["ids"][:4]
    panel = wandb.Table(columns=["id", "image", "ground truth", *labellers])
    for sample_id in panel_ids:
        image = dataset.load_image(sample_id).permute(1, 2, 0).numpy()
        gt = dataset.load_gt(sample_id)
        cells: list[Any] = [sample_id, wandb.Image(image, caption=sample_id)]
        cells.append(
            None
            if gt is None
            else wandb.Image(
                image, masks={"gt": {"mask_data": gt.numpy(), "class_labels": id_names}}
            )
        )
        for name, labels in labellers.items():
            label = labels.cache.load(sample_id)
            cells.append(
                None
                if label is None
                else wandb.Image(
                    image, masks={name: {"mask_data": label.numpy(), "class_labels": id_names}}
                )
            )
        panel.add_data(*cells)
    run.log(
        {"compare/summary": summary, "compare/per_class_iou": per_class, "compare/panel": panel}
    )
    for r in record["labellers"]:
        run.summary[f"{r['labeller']}/mIoU"] = r["mIoU"]
    directory = str(Path(run.dir).parent)
    run.finish()
    return directory  # fmt: skip
