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
import json
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np

# The measurements and the report have their own modules; their names stay importable here.
from wsss_pl.compare_report import _fmt, log_wandb, report  # noqa: F401
from wsss_pl.compare_stats import (  # noqa: F401
    LabellerStats,
    _device,
    _iou,
    _miou,
    _peak_rss_mib,
    disagreements,
    label_ids,
    score,
)
from wsss_pl.errors import WsssError

log = logging.getLogger(__name__)
PROG = "wsss_pl compare-labels"


class CompareError(WsssError):
    """A bad compare-labels config (printed as one line by the CLI)."""


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
