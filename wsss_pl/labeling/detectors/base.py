"""The detector interface (``detector:`` class_path in config): ``DetectorSpec``, ``Detections``.

A ``DetectorSpec`` is the config side (plain settings for the LightningCLI schema, ``settings()``
for the cache fingerprint, ``build()`` for the frozen module), as ``SegmenterSpec`` is for the
box -> mask models. Every built detector is called as

    detector(images, present, vocabulary, box_threshold=None) -> list[Detections]

with B uint8 [3, H_i, W_i] RGB images and B lists of the image's class names (image-level
labels), and returns per image ``Detections``: boxes float32 [N, 4] xyxy in original-image
pixels, scores float32 [N], class ids long [N] (1..C, only among the prompted classes), the
phrase each box answered, and ``num_unmatched`` (boxes above the box threshold that matched no
prompted class; counted, never used). An image without classes gets empty detections without a
forward. Detectors that also give masks (SAM 3, ``provides_masks``) fill ``Detections.masks``
and replace the segmenter.

The rules shared by every detector: only the image's own classes are prompted (the image-level
class filter), ``box_threshold`` on the box score, and the batching rules of
``wsss_pl.labeling.invariance`` (``fixed``: every forward at exactly ``batch_size`` rows of one
shape, short batches filled with zero images and a neutral prompt whose outputs are dropped;
``per_image``: one image per forward; ``free``: batches as they come).
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from wsss_pl.classes import ClassVocabulary
from wsss_pl.errors import WeightsError
from wsss_pl.labeling.invariance import BATCH_MODES, BatchMode
from wsss_pl.labeling.rules import CaptionStyle, ImageResize, PhraseRule

TINY = "tiny"
# A spec naming the tiny model is built by wsss_pl.labeling.tiny (no model module imports it).
TINY_BUILD = (
    "the tiny random model is built by wsss_pl.labeling.tiny.build_tiny_detector / "
    "build_tiny_segmenter (or wsss_pl.labeling.labeller_factory.build_detector / build_segmenter)"
)
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


@dataclass(frozen=True)
class DetectorOptions:
    """The labelling rules ``OnlinePseudoLabels`` passes to every detector it builds.

    Grounding-DINO-only rules (``caption_style``, ``phrase_rule``, ``image_resize``,
    ``image_size``, ``pad_to_canvas``) are ignored by detectors with their own processor.
    """

    box_threshold: float = 0.3
    text_threshold: float = 0.25
    image_size: int = 800
    pad_to_canvas: bool = False
    caption_style: CaptionStyle = "paper"
    phrase_rule: PhraseRule = "argmax_word"
    image_resize: ImageResize = "pil"
    clip_boxes: bool = False
    batch_mode: BatchMode = "fixed"
    batch_size: int = 4


class DetectorSpec(ABC):
    """Config of an open-vocabulary detector (see the module docstring for the call contract)."""

    provides_masks: ClassVar[bool] = False  # True: Detections carry masks, no segmenter runs
    family: ClassVar[str] = "detector"

    @abstractmethod
    def settings(self) -> dict[str, Any]:
        """What changes the boxes (weights hash, model family): part of the cache fingerprint."""

    @abstractmethod
    def build(self, options: DetectorOptions) -> nn.Module:
        """The frozen detector module, on the CPU."""

    @abstractmethod
    def input_size(self, height: int, width: int, options: DetectorOptions) -> tuple[int, int]:
        """(h, w) of the model input for an image of this size (the label pass groups by it)."""

    @property
    def name(self) -> str:
        """Short name for logs and tables."""
        return f"{self.family}:{getattr(self, 'model', '?')}"


def model_directory_settings(
    name: str, download: bool, family: str | None = None
) -> tuple[dict[str, Any], str]:
    """Fingerprint entries (weights and config sha256) and the local directory of a hub model;
    with ``family`` (a key of ``model_folders.FAMILIES``) the folder must hold that family."""
    from wsss_pl.labeling.model_folders import check_family
    from wsss_pl.weights import checkpoint_fingerprint, resolve_hub_model

    directory = Path(resolve_hub_model(name, download=download))
    if family is not None:
        check_family(directory, family)
    weights = next((directory / f for f in _WEIGHT_FILES if (directory / f).is_file()), None)
    if weights is None:
        raise WeightsError(f"model directory {directory} has none of {_WEIGHT_FILES}")
    # Keyed by content, not by name or path: a moved or renamed copy reuses the cache.
    config_sha256 = hashlib.sha256((directory / "config.json").read_bytes()).hexdigest()
    return {"sha256": checkpoint_fingerprint(weights), "config_sha256": config_sha256}, str(
        directory
    )


class HubDetectorSpec(DetectorSpec):
    """A detector whose weights are a hub folder: a registry name, an ``owner/name`` hub id or a
    local directory (``hf download ORG/NAME --local-dir DIR``). Owns resolving, checking and
    loading it (``wsss_pl.labeling.model_folders``): the folder must hold ``hub_family``'s model
    (``config.json`` ``model_type``), which loads with that family's transformers class; any
    other folder is a one-line WeightsError naming the spec that fits it. Subclasses set
    ``model`` and ``download`` and build their detector module around ``load()``."""

    hub_family: ClassVar[str]  # a key of wsss_pl.labeling.model_folders.FAMILIES
    model: str
    download: bool

    def weights_settings(self) -> dict[str, Any]:
        """sha256 of the folder's weights file and config.json (the cache fingerprint's part)."""
        return model_directory_settings(self.model, self.download, self.hub_family)[0]

    def directory(self) -> str:
        """The checked local folder (downloaded into the hub cache when allowed)."""
        from wsss_pl.labeling.model_folders import check_family
        from wsss_pl.weights import resolve_hub_model

        directory = resolve_hub_model(self.model, download=self.download)
        check_family(directory, self.hub_family)
        return directory

    def load(self) -> tuple[nn.Module, Any]:
        """(model, processor or None) of the folder, with the family's own classes."""
        from wsss_pl.labeling.model_folders import load_folder

        return load_folder(self.directory(), self.hub_family)

    # The families whose module is ``detector_class(model, processor, **detector_kwargs)`` set
    # these and inherit ``settings`` and ``build``; Grounding DINO (a tokenizer, not a processor)
    # builds its own.
    detector_class: ClassVar[type[nn.Module]]
    tiny_name: ClassVar[str]  # the fingerprint name of the family's tiny random model

    def rules(self) -> dict[str, Any]:
        """The spec's own settings that change labels (fingerprinted beside the weights)."""
        return {}

    def detector_kwargs(self, options: DetectorOptions) -> dict[str, Any]:
        """``detector_class``'s keyword arguments from the labelling rules and this spec; the
        families add their own to these shared ones."""
        return {
            "box_threshold": options.box_threshold,
            "batch_mode": options.batch_mode,
            "batch_size": options.batch_size,
        }

    def settings(self) -> dict[str, Any]:
        if self.model == TINY:
            return {"name": self.tiny_name, "seed": 0, **self.rules()}
        return {"family": self.family, **self.weights_settings(), **self.rules()}

    def build(self, options: DetectorOptions) -> nn.Module:
        kwargs = self.detector_kwargs(options)
        if self.model == TINY:
            raise ValueError(TINY_BUILD)
        model, processor = self.load()
        return self.detector_class(model, processor, **kwargs)

    def input_size(self, height: int, width: int, options: DetectorOptions) -> tuple[int, int]:
        return (1, 1)  # the processor resizes every image to one fixed input size


def check_batching(batch_mode: str, batch_size: int) -> None:
    if batch_mode not in BATCH_MODES:
        raise ValueError(f"batch_mode must be one of {BATCH_MODES}, got {batch_mode!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"detector batch_size must be an integer >= 1, got {batch_size!r}")


class FrozenDetector(nn.Module):
    """The module side every detector shares: a frozen model (eval mode, no gradients, kept in
    eval mode inside a training LightningModule), the box threshold, the batching rules
    (``check_batching``) and ``device``. A family adds its processor call and post-processing.
    """

    def __init__(
        self, model: nn.Module, box_threshold: float, batch_mode: BatchMode, batch_size: int
    ) -> None:
        super().__init__()
        check_batching(batch_mode, batch_size)
        self.model = model.eval().requires_grad_(False)
        self.box_threshold = box_threshold
        self.batch_mode: BatchMode = batch_mode
        self.batch_size = batch_size

    def train(self, mode: bool = True) -> FrozenDetector:
        super().train(mode)
        self.model.eval()  # frozen: no dropout even inside a training LightningModule
        return self

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def set_threshold(self, box_threshold: float, text_threshold: float | None = None) -> None:
        """Change the box threshold (e.g. to retry a class that got no box at a lower one)."""
        self.box_threshold = box_threshold

    def call_threshold(
        self, images: list[Tensor], present: list[list[str]], box_threshold: float | None
    ) -> float:
        """The box threshold of one call (its own, else the module's), after checking that every
        image has its class list."""
        if len(images) != len(present):
            raise ValueError(f"{len(images)} images but {len(present)} class lists")
        return self.box_threshold if box_threshold is None else box_threshold


@dataclass
class Detections:
    """The boxes found in one image, in the detector's query order (caption chunk by chunk).

    Attributes:
        scores: float32 [N], the box's highest token score (sigmoid), as Grounding DINO ranks boxes.
        labels: long [N], class ids in 1..C, only among the classes prompted for.
        boxes: float32 [N, 4], xyxy in pixels of the original image (clipped to it only with
            ``clip_boxes``).
        phrases: the caption phrase each box was matched to (a class or assist-word phrase).
        num_unmatched: boxes above the box threshold that matched no class (``argmax_word``: the
            arg-max token is a separator/special token or its word is no class or assist word;
            ``best_class_token``: no class token above the text threshold); not in ``boxes``.
    """

    boxes: Tensor
    scores: Tensor
    labels: Tensor
    phrases: list[str] = field(default_factory=list)
    num_unmatched: int = 0
    masks: Tensor | None = None  # bool [N, H, W] from a detector that segments (SAM 3)

    @classmethod
    def empty(cls, device: torch.device | str = "cpu") -> Detections:
        return cls(
            boxes=torch.zeros(0, 4, device=device),
            scores=torch.zeros(0, device=device),
            labels=torch.zeros(0, dtype=torch.long, device=device),
        )

    def __len__(self) -> int:
        return self.labels.numel()


def concat_detections(parts: list[Detections]) -> Detections:
    """One image's detections of several rounds (caption chunks, query rounds), in order."""
    return Detections(
        boxes=torch.cat([p.boxes for p in parts]),
        scores=torch.cat([p.scores for p in parts]),
        labels=torch.cat([p.labels for p in parts]),
        phrases=[phrase for p in parts for phrase in p.phrases],
        num_unmatched=sum(p.num_unmatched for p in parts),
        masks=None if any(p.masks is None for p in parts) else torch.cat([p.masks for p in parts]),
    )


def class_queries(
    vocabulary: ClassVocabulary, names: list[str], template: str
) -> list[tuple[str, str, int]]:
    """(query text, phrase, class id) for every phrase of the image's classes, in class order:
    the class's prompt name, then its assist words (and exclusion phrases)."""
    from wsss_pl.labeling.detectors.prompt import class_phrases

    queries = []
    for name in names:
        label_id = vocabulary.label_id(name)
        for phrase in class_phrases(vocabulary, name, "prompt_names"):
            queries.append((template.format(phrase), phrase, label_id))
    return queries
