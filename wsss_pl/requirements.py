"""What a config needs on disk: every weight (and dataset) it names, found from its YAML alone.

``config_needs(config)`` walks a loaded config (a training config or a ``compare-labels`` one)
and lists each weight it refers to with the config key that names it:

- ``model.net.init_args.pretrained``: a registry checkpoint (``wsss_pl.weights.CHECKPOINTS``) or
  a file;
- the labeller (``data.train_labels.init_args``, or each of ``labellers.<name>`` of a
  compare config): its detector (a hub model name / id / folder, or a ``DetectorSpec``
  class_path with ``init_args.model``), its SAM checkpoint or its segmenter spec's weights;
- the dataset source (``data.source``), for ``fetch``.

``tiny`` models and ``null`` weights need nothing. Nothing here reads a weight file; finding
and fetching them is ``wsss_pl.fetching``.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from wsss_pl.errors import ConfigError

NeedKind = Literal["checkpoint", "hub", "dataset"]
TINY = "tiny"

# model_type values (config.json) each model-folder spec can load, and the spec that fits a type.
FAMILIES: dict[str, tuple[str, ...]] = {
    "GroundingDinoSpec": ("grounding-dino",),
    "MMGroundingDinoSpec": ("mm-grounding-dino",),
    "OwlV2Spec": ("owlv2",),
    "OmDetTurboSpec": ("omdet-turbo",),
    "Sam3Spec": ("sam3",),
    "Sam2Spec": ("sam2",),
    "Sam3TrackerSpec": ("sam3", "sam3_tracker"),
}
SPEC_FOR_TYPE: dict[str, str] = {
    "grounding-dino": "wsss_pl.labeling.detectors.GroundingDinoSpec",
    "mm-grounding-dino": "wsss_pl.labeling.detectors.MMGroundingDinoSpec",
    "owlv2": "wsss_pl.labeling.detectors.OwlV2Spec",
    "omdet-turbo": "wsss_pl.labeling.detectors.OmDetTurboSpec",
    "sam3": "wsss_pl.labeling.detectors.Sam3Spec (or segmenters.Sam3TrackerSpec)",
    "sam3_tracker": "wsss_pl.labeling.segmenters.Sam3TrackerSpec",
    "sam2": "wsss_pl.labeling.segmenters.Sam2Spec",
}
# Labeller classes whose init_args name detector / SAM weights.
_LABELLERS = ("OnlinePseudoLabels", "BoxPromptLabels")
_MASK_DETECTORS = ("Sam3Spec",)  # detectors that make the masks: no SAM weights needed


@dataclass(frozen=True)
class Need:
    """One weight or dataset a config names.

    Attributes:
        key: the config key that names it (``data.train_labels.init_args.sam_checkpoint``).
        value: the value written there (a registry name, hub id, path; a dataset's class name).
        kind: ``checkpoint`` (one file: registry name or path), ``hub`` (a model folder: hub
            name / id or a local folder) or ``dataset``.
        user: the class that loads it (``GroundingDinoSpec``, ``DeepLabV2``...), for messages.
        families: for ``hub``, the config.json ``model_type`` values ``user`` can load.
        download: whether the config lets it be downloaded (``download: false`` does not).
        init_args: for ``dataset``, the source's class_path and init_args.
    """

    key: str
    value: str
    kind: NeedKind
    user: str = ""
    families: tuple[str, ...] = ()
    download: bool = True
    init_args: tuple[tuple[str, Any], ...] = ()
    config_file: str = ""  # for ``dataset`` in a compare config: the training config naming it

    @property
    def arguments(self) -> dict[str, Any]:
        return dict(self.init_args)


# ----------------------------------------------------------------------------- reading configs


def _merge(base: dict[str, Any], overlay: Mapping[str, Any]) -> dict[str, Any]:
    """``overlay`` over ``base``; a node whose class_path changes is replaced whole."""
    merged = dict(base)
    for key, value in overlay.items():
        old = merged.get(key)
        if (
            isinstance(old, dict)
            and isinstance(value, Mapping)
            and not ("class_path" in value and value.get("class_path") != old.get("class_path"))
        ):
            merged[key] = _merge(old, value)
        else:
            merged[key] = dict(value) if isinstance(value, Mapping) else value
    return merged


def load_config(files: Sequence[str | Path], overrides: Sequence[str] = ()) -> dict[str, Any]:
    """The YAML files merged in order, then ``--dotted.key VALUE`` overrides (values as YAML).

    A missing or unreadable file, or an override without a value, is a one-line ConfigError.
    """
    config: dict[str, Any] = {}
    for file in files:
        path = Path(file)
        try:
            content = yaml.safe_load(path.read_text(encoding="utf-8"))
        except OSError as error:
            raise ConfigError(f"config file {path} cannot be read: {error.strerror}") from None
        except yaml.YAMLError as error:
            raise ConfigError(f"config file {path} is not valid YAML: {error}") from None
        if content is None:
            continue
        if not isinstance(content, dict):
            raise ConfigError(f"config file {path} must be a YAML mapping of sections")
        config = _merge(config, content)
    items = list(overrides)
    index = 0
    while index < len(items):
        option = items[index]
        if not option.startswith("--"):
            raise ConfigError(f"unexpected argument {option!r}; options are --KEY VALUE")
        if "=" in option:
            key, text = option[2:].split("=", 1)
            index += 1
        elif index + 1 < len(items):
            key, text = option[2:], items[index + 1]
            index += 2
        else:
            raise ConfigError(f"option {option} has no value")
        node: dict[str, Any] = {}
        leaf = node
        *parents, last = key.split(".")
        for part in parents:
            leaf = leaf.setdefault(part, {})
        leaf[last] = yaml.safe_load(text)
        config = _merge(config, node)
    return config


# ----------------------------------------------------------------------------- what is needed


def _class_name(class_path: Any) -> str:
    return str(class_path).rsplit(".", 1)[-1]


def _default(class_path: str, parameter: str) -> Any:
    """The default of ``parameter`` in the constructor of ``class_path`` (None if unknown)."""
    try:
        module, name = class_path.rsplit(".", 1)
        cls = getattr(importlib.import_module(module), name)
        found = inspect.signature(cls).parameters.get(parameter)
    except (ImportError, AttributeError, ValueError, TypeError):
        return None
    if found is None or found.default is inspect.Parameter.empty:
        return None
    return found.default


def _get(init_args: Mapping[str, Any], parameter: str, class_path: str) -> Any:
    """``init_args[parameter]``, else the class's default (imported only then)."""
    if parameter in init_args:
        return init_args[parameter]
    return _default(class_path, parameter)


def _spec(node: Any, key: str, parameter: str) -> tuple[str, str, Any, bool] | None:
    """(class name, key of its weights, value, download) of a class_path spec node, or None."""
    if not isinstance(node, Mapping) or "class_path" not in node:
        return None
    class_path = str(node["class_path"])
    init_args = node.get("init_args") or {}
    value = _get(init_args, parameter, class_path)
    download = _get(init_args, "download", class_path)
    return _class_name(class_path), f"{key}.init_args.{parameter}", value, download is not False


def labeller_needs(init_args: Mapping[str, Any], prefix: str, class_name: str) -> list[Need]:
    """The weights of one labeller's settings (``OnlinePseudoLabels`` / ``BoxPromptLabels``
    init_args, or a compare config's labeller); ``prefix`` is the key they sit under."""
    needs: list[Need] = []
    labeller_path = f"wsss_pl.labeling.online.{class_name}"
    if class_name == "BoxPromptLabels":
        labeller_path = "wsss_pl.labeling.box_prompts.BoxPromptLabels"
    download = init_args.get("download", True) is not False
    masks_from_detector = False
    if class_name == "OnlinePseudoLabels":
        detector = _get(init_args, "detector", labeller_path)
        spec = _spec(detector, f"{prefix}.detector", "model")
        if spec is not None:
            name, key, value, spec_download = spec
            masks_from_detector = name in _MASK_DETECTORS
            if value is not None and str(value) != TINY:
                families = FAMILIES.get(name, ())
                needs.append(Need(key, str(value), "hub", name, families, spec_download))
        elif detector is not None and str(detector) != TINY:
            families = FAMILIES["GroundingDinoSpec"] + FAMILIES["MMGroundingDinoSpec"]
            key = f"{prefix}.detector"
            needs.append(Need(key, str(detector), "hub", "GroundingDinoSpec", families, download))
    if masks_from_detector:
        return needs
    segmenter = init_args.get("segmenter")
    spec = None
    if isinstance(segmenter, Mapping):
        name = _class_name(segmenter.get("class_path", ""))
        parameter = "checkpoint" if name in ("SamSpec", "HQSamSpec") else "model"
        spec = _spec(segmenter, f"{prefix}.segmenter", parameter)
    if spec is not None:
        name, key, value, spec_download = spec
        if value is not None and str(value) != TINY:
            if name in FAMILIES:
                needs.append(Need(key, str(value), "hub", name, FAMILIES[name], spec_download))
            else:
                needs.append(Need(key, str(value), "checkpoint", name, (), spec_download))
        return needs
    checkpoint = _get(init_args, "sam_checkpoint", labeller_path)
    if checkpoint is not None and str(checkpoint) != TINY:
        key = f"{prefix}.sam_checkpoint"
        needs.append(Need(key, str(checkpoint), "checkpoint", "SAM", (), download))
    return needs


def _dataset_need(source: Any, key: str, config_file: str = "") -> list[Need]:
    if not isinstance(source, Mapping) or "class_path" not in source:
        return []
    name = _class_name(source["class_path"])
    if name.startswith("Synthetic"):
        return []  # generated on the spot
    init_args = dict(source.get("init_args") or {})
    arguments = (("class_path", str(source["class_path"])), *sorted(init_args.items()))
    download = init_args.get("download") is True
    return [Need(key, name, "dataset", name, (), download, arguments, config_file)]


def config_needs(
    config: Mapping[str, Any],
    *,
    net: bool = True,
    labels: bool = True,
    data: bool = True,
    base_dir: Path | None = None,
) -> list[Need]:
    """Every weight (and, with ``data``, the dataset) ``config`` names, each once, in order:
    the segmentation net's init weights (``net``), the labeller's (``labels``), the dataset.

    A ``compare-labels`` config (``labellers:``) lists each labeller's weights and the dataset
    of its ``data:`` training config (a path relative to the working folder, ``base_dir`` (the
    compare config's folder) or its parent).
    """
    needs: list[Need] = []
    if "labellers" in config:
        labellers = config.get("labellers") or {}
        if not isinstance(labellers, Mapping):
            raise ConfigError("labellers must be a mapping of name -> OnlinePseudoLabels options")
        for name, options in labellers.items():
            needs += labeller_needs(options or {}, f"labellers.{name}", "OnlinePseudoLabels")
        training = config.get("data")
        if data and isinstance(training, str):
            path = Path(training)
            bases = [] if base_dir is None else [base_dir, base_dir.parent]
            path = next(
                (b / path for b in bases if not path.is_file() and (b / path).is_file()), path
            )
            if path.is_file():
                inner = load_config([path])
                source = (inner.get("data") or {}).get("source")
                needs += _dataset_need(source, f"{training}: data.source", str(path))
        return _unique(needs)
    if net:
        spec = (
            (config.get("model") or {}).get("net")
            if isinstance(config.get("model"), Mapping)
            else None
        )
        if isinstance(spec, Mapping):
            pretrained = (spec.get("init_args") or {}).get("pretrained")
            if pretrained is not None:
                user = _class_name(spec.get("class_path", "net"))
                key = "model.net.init_args.pretrained"
                needs.append(Need(key, str(pretrained), "checkpoint", user))
    section = config.get("data") if isinstance(config.get("data"), Mapping) else {}
    train_labels = section.get("train_labels")
    if labels and isinstance(train_labels, Mapping):
        name = _class_name(train_labels.get("class_path", ""))
        if name in _LABELLERS:
            prefix = "data.train_labels.init_args"
            needs += labeller_needs(train_labels.get("init_args") or {}, prefix, name)
    if data:
        needs += _dataset_need(section.get("source"), "data.source")
    return _unique(needs)


def _unique(needs: list[Need]) -> list[Need]:
    """One entry per (kind, value): the first key that names it is shown."""
    seen: set[tuple[str, str]] = set()
    unique = []
    for need in needs:
        if (need.kind, need.value) not in seen or need.kind == "dataset":
            seen.add((need.kind, need.value))
            unique.append(need)
    return unique
