"""``python -m wsss_pl compare-labels``: several labellers on the same images, one table.

Given a dataset (``source:`` inline, or ``data:`` a training config whose ``data.source`` is
used) and N labellers (``labellers:`` name -> ``OnlinePseudoLabels`` options, e.g. the paper's
Grounding DINO + SAM, SAM 3, OWLv2 + SAM), every labeller labels the same ids into its own
pseudo-label cache (``<output_dir>/cache/<dataset>/<fingerprint>/``: ids already there are read,
not relabelled, so an interrupted comparison resumes), then one table compares them:

- pseudo-label mIoU and per-class IoU against the ground truth (ids that have it; ignore
  pixels of a pseudo-label count as misses, as in ``evaluate-labels``),
- img/s (images labelled per second of labelling calls, model loading excluded, summed over
  resumed runs) and peak memory (CUDA: peak allocated during the labeller's calls; CPU: the
  process's peak resident memory after its calls, an upper bound that includes earlier
  labellers),
- boxes (instances) and unmatched boxes per image, prompted classes without a box per image,
- the images where the labellers disagree most (mean pairwise fraction of differing pixels).

Written to ``<output_dir>/compare.md`` and ``compare.json``; with ``wandb:`` also a W&B run with
the summary and per-class tables and a side-by-side panel (image | GT | each labeller's label) of
the most disputed images. See ``configs/compare_voc.yaml``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wsss_pl.classes import IGNORE_INDEX
from wsss_pl.errors import WsssError

log = logging.getLogger(__name__)
PROG = "wsss_pl compare-labels"


class CompareError(WsssError):
    """A bad compare-labels config (printed as one line by the CLI)."""


@dataclass
class LabellerStats:
    """What one labeller did on the compared ids."""

    name: str
    fingerprint: str
    labelled_now: int = 0
    images: int = 0  # labelled images over all runs of this fingerprint (for img/s)
    seconds: float = 0.0
    load_seconds: float = 0.0
    peak_memory_mib: float | None = None
    memory_kind: str = ""
    confusion: np.ndarray | None = None  # int64 [C, C + 1], last column: predicted ignore
    boxes: int = 0
    unmatched: int = 0
    missing: int = 0
    counted: int = 0  # ids with metadata
    per_image_iou: dict[str, float] = field(default_factory=dict)

    @property
    def images_per_second(self) -> float | None:
        return self.images / self.seconds if self.seconds > 0 else None


def build_parser() -> Any:
    from jsonargparse import ActionConfigFile, ArgumentParser

    from wsss_pl.data.base import DatasetSource

    parser = ArgumentParser(
        prog=PROG, description=__doc__.split("\n\n")[0], exit_on_error=False, allow_abbrev=False
    )
    parser.add_argument(
        "--config", action=ActionConfigFile, help="YAML config (see configs/compare_voc.yaml)"
    )
    parser.add_argument(
        "--data", type=str | None, default=None, help="training config whose data.source is used"
    )
    parser.add_subclass_arguments(
        DatasetSource, "source", required=False, help="the dataset (instead of --data)"
    )
    parser.add_argument(
        "--stage", type=str, default="train", help="split of the source: train, val, test"
    )
    parser.add_argument("--limit", type=int | None, default=None, help="first N ids of the split")
    parser.add_argument("--ids", type=list[str] | None, default=None, help="these ids instead")
    parser.add_argument(
        "--labellers",
        type=dict[str, dict[str, Any]],
        default={},
        help="name -> OnlinePseudoLabels options",
    )
    parser.add_argument("--output_dir", type=str, default="runs/compare_labels")
    parser.add_argument("--batch_size", type=int, default=4, help="images per labelling call")
    parser.add_argument("--device", type=str, default="auto", help="auto, cpu, cuda, cuda:1")
    parser.add_argument("--disagreements", type=int, default=8, help="most disputed images listed")
    parser.add_argument(
        "--wandb",
        type=dict[str, Any] | None,
        default=None,
        help="wandb.init kwargs (project, mode...)",
    )
    return parser  # fmt: skip


def _instantiate(parser: Any, key: str, value: Any, where: str) -> Any:
    try:
        config = parser.parse_object({key: value})
        return getattr(parser.instantiate_classes(config), key)
    except Exception as error:  # jsonargparse reports bad keys / values as several exception types
        text = " ".join(line.strip() for line in str(error).splitlines() if line.strip())
        raise CompareError(f"{where}: {text[:500]}") from error


def load_source(options: Any) -> Any:
    """The DatasetSource from ``source`` or from ``data``'s training config."""
    from jsonargparse import ArgumentParser

    from wsss_pl.data.base import DatasetSource

    if options.source is not None:
        return options.source
    if options.data is None:
        raise CompareError(
            "give the dataset: `source:` (class_path + init_args) or `data:` (a training config)"
        )
    import yaml

    path = Path(options.data)
    if not path.is_file():
        raise CompareError(f"data config {path} not found")
    config = yaml.safe_load(path.read_text()) or {}
    source = (config.get("data") or {}).get("source")
    if source is None:
        raise CompareError(f"{path} has no data.source; give `source:` instead")
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(DatasetSource, "source")
    return _instantiate(parser, "source", source, f"{path}: data.source")


def build_labellers(options: Any) -> dict[str, Any]:
    from jsonargparse import ArgumentParser

    from wsss_pl.labeling.online import OnlinePseudoLabels

    if len(options.labellers) < 1:
        raise CompareError(
            "`labellers:` is empty: give at least one name -> OnlinePseudoLabels options"
        )
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(OnlinePseudoLabels, "labeller")
    labellers = {}
    for name, settings in options.labellers.items():
        settings = dict(settings or {})
        settings.setdefault("cache_root", str(Path(options.output_dir) / "cache"))
        settings.setdefault("write_workers", 0)
        labellers[name] = _instantiate(parser, "labeller", settings, f"labellers.{name}")
    return labellers


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _peak_rss_mib() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return peak / 1024.0


def label_ids(
    name: str, labels: Any, source: Any, dataset: Any, ids: list[str], options: Any
) -> LabellerStats:
    """Label the ``ids`` that ``labels``' cache lacks; returns the timing of this run + before."""
    from wsss_pl.io import read_json, write_json
    from wsss_pl.labeling.invariance import deterministic_labelling
    from wsss_pl.labeling.label_pass import image_size

    device = _device(options.device)
    labels.bind_device(device)
    labels.setup(source)
    cache = labels.cache
    stats = LabellerStats(name, cache.fingerprint)
    timing_path = Path(options.output_dir) / "timing" / f"{cache.fingerprint}.json"
    previous = read_json(timing_path) if timing_path.is_file() else {}
    stats.images = int(previous.get("images", 0))
    stats.seconds = float(previous.get("seconds", 0.0))
    stats.peak_memory_mib = previous.get("peak_memory_mib")
    stats.memory_kind = previous.get("memory_kind", "")
    todo = [i for i in ids if not cache.has(i)]
    print(f"{name}: {len(ids) - len(todo)} of {len(ids)} ids cached in {cache.directory}")
    if not todo:
        return stats
    start = time.perf_counter()
    labeler = labels.labeler(device)
    stats.load_seconds = time.perf_counter() - start
    # Same-shape images share calls (the label pass's order), in chunks of batch_size.
    shapes = {i: labels.detector_input_size(*image_size(dataset.image_path(i))) for i in todo}
    todo.sort(key=lambda i: (shapes[i], ids.index(i)))
    groups = [list(g) for _, g in itertools.groupby(todo, key=lambda i: shapes[i])]
    chunks = [
        g[k : k + options.batch_size] for g in groups for k in range(0, len(g), options.batch_size)
    ]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    bf16 = labels.precision == "bf16"
    for chunk in chunks:
        images = [dataset.load_image(i).to(device) for i in chunk]
        present = [dataset.image_labels(i) for i in chunk]
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        tic = time.perf_counter()
        with (
            deterministic_labelling(device, labels.cpu_threads),
            torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16),
        ):
            results = labeler(images, present)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        stats.seconds += time.perf_counter() - tic
        for sample_id, result in zip(chunk, results, strict=True):
            cache.store(sample_id, result.label.cpu(), {"id": sample_id, **result.metadata})
        stats.images += len(chunk)
        stats.labelled_now += len(chunk)
    if device.type == "cuda":
        stats.peak_memory_mib = torch.cuda.max_memory_allocated(device) / 2**20
        stats.memory_kind = "CUDA peak allocated"
    else:
        stats.peak_memory_mib = _peak_rss_mib()
        stats.memory_kind = "process peak RSS"
    write_json(
        timing_path,
        {
            "name": name, "images": stats.images, "seconds": stats.seconds,
            "peak_memory_mib": stats.peak_memory_mib, "memory_kind": stats.memory_kind,
            "device": str(device),
        },
    )  # fmt: skip
    return stats


def score(
    stats: LabellerStats, labels: Any, dataset: Any, ids: list[str], num_classes: int
) -> None:
    """Confusion against the ground truth, per-image IoU, box counts from the metadata."""
    from wsss_pl.metrics import count_labels

    confusion = np.zeros((num_classes, num_classes + 1), dtype=np.int64)
    for sample_id in ids:
        label = labels.cache.load(sample_id)
        metadata = labels.cache.load_metadata(sample_id) or {}
        if metadata:
            stats.counted += 1
            stats.boxes += len(metadata.get("instances") or ())
            stats.unmatched += int(metadata.get("num_unmatched_boxes") or 0)
            stats.missing += len(metadata.get("missing_classes") or ())
        gt = dataset.load_gt(sample_id)
        if gt is None or label is None:
            continue
        matrix, ignored = count_labels(label, gt, num_classes)
        confusion[:, :num_classes] += matrix.numpy()
        confusion[:, num_classes] += ignored.numpy()
        stats.per_image_iou[sample_id] = _miou(matrix.numpy(), ignored.numpy(), present_only=True)
    stats.confusion = confusion if confusion.any() else None


def _iou(matrix: np.ndarray, ignored: np.ndarray) -> np.ndarray:
    """float [C] IoU per class (NaN where a class is in neither map); ignore = miss."""
    tp = np.diag(matrix).astype(np.float64)
    union = matrix.sum(1) + ignored + matrix.sum(0) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / np.maximum(union, 1), np.nan)


def _miou(matrix: np.ndarray, ignored: np.ndarray, present_only: bool = False) -> float:
    values = _iou(matrix, ignored)
    return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")


def disagreements(labellers: dict[str, Any], ids: list[str], top: int) -> list[dict[str, Any]]:
    """The ``top`` ids with the highest mean pairwise fraction of differing pixels (pixels that
    are ignore in either label excluded), most disputed first."""
    if len(labellers) < 2:
        return []
    rows = []
    for sample_id in ids:
        maps = [labels.cache.load(sample_id) for labels in labellers.values()]
        if any(m is None for m in maps):
            continue
        fractions = []
        for a, b in itertools.combinations(maps, 2):
            valid = (a != IGNORE_INDEX) & (b != IGNORE_INDEX)
            fractions.append(float(((a != b) & valid).sum()) / max(int(valid.sum()), 1))
        rows.append({"id": sample_id, "disagreement": float(np.mean(fractions))})
    rows.sort(key=lambda r: (-r["disagreement"], r["id"]))
    return rows[:top]


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


def compare(options: Any) -> dict[str, Any]:
    """Run a comparison (``options``: the parsed config); returns the JSON record."""
    source = load_source(options)
    labellers = build_labellers(options)
    stage = options.stage
    if stage not in ("train", "val", "test", "predict"):
        raise CompareError(f"stage must be train, val, test or predict, got {stage!r}")
    source.prepare_data()
    dataset = source.dataset(stage)
    ids = list(dataset.ids)
    if options.ids:
        unknown = sorted(set(options.ids) - set(ids))
        if unknown:
            raise CompareError(f"ids not in the {stage} split of {source.name}: {unknown[:5]}")
        ids = list(options.ids)
    if options.limit is not None:
        ids = ids[: options.limit]
    if not ids:
        raise CompareError(f"no ids to label in the {stage} split of {source.name}")
    class_names = list(source.vocabulary.class_names)
    all_stats = []
    for name, labels in labellers.items():
        stats = label_ids(name, labels, source, dataset, ids, options)
        score(stats, labels, dataset, ids, len(class_names) + 1)
        all_stats.append(stats)
    disputed = disagreements(labellers, ids, options.disagreements)
    markdown, record = report(all_stats, class_names, disputed, ids)
    output = Path(options.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    if options.wandb is not None:
        record["wandb_dir"] = log_wandb(
            dict(options.wandb), record, labellers, dataset, class_names, output
        )
    (output / "compare.md").write_text(markdown)
    (output / "compare.json").write_text(
        json.dumps(record, indent=2, allow_nan=False, default=_json_default)
    )
    print(markdown)
    print(f"written: {output / 'compare.md'}, {output / 'compare.json'}")
    return record


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if any(a in ("-h", "--help") for a in argv):
        parser.print_help()
        return 0
    try:
        options = parser.instantiate_classes(parser.parse_args(argv))  # builds `source`
    except (argparse.ArgumentError, Exception) as error:  # jsonargparse's ArgumentError
        if isinstance(error, WsssError):
            raise
        text = " ".join(line.strip() for line in str(error).splitlines() if line.strip())
        if 'key "ids"' in text:  # YAML reads 2007_000032 as the integer 2007000032
            text += " (quote ids in YAML: ids: ['2007_000032'])"
        raise CompareError(f"{PROG}: {text[:500]}") from error
    compare(options)
    return 0
