"""OnlinePseudoLabels: the label source that makes Grounding DINO + SAM labels lazily and caches them.

In the DataLoader workers it only reads the cache; on the rank's device (DataModule
``on_after_batch_transfer``) it labels, in one batched call, the samples the cache did not have,
writes them to the cache, and fills the batch. The models are built on first use, so a run whose
cache is complete never loads them.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from typing import Any, Literal

import torch
from jsonargparse.typing import NonNegativeInt, NotEmptyStr

from wsss_pl.classes import ClassVocabulary
from wsss_pl.data.base import DatasetSource
from wsss_pl.data.label_sources import LabelSource, TargetLoader
from wsss_pl.errors import CacheError
from wsss_pl.labeling.detector_rows import DetectorRows
from wsss_pl.labeling.detectors import DetectorSpec, GroundingDinoSpec
from wsss_pl.labeling.exclusion import with_exclusion_phrases
from wsss_pl.labeling.invariance import (
    BATCH_MODES,
    CAPTION_TOKENS,
    BatchMode,
    deterministic_labelling,
    environment,
)
from wsss_pl.labeling.labeler import MissingClassPolicy, PseudoLabeler
from wsss_pl.labeling.labeller_factory import build_pseudo_labeler
from wsss_pl.labeling.merge import ConflictPolicy, MergePolicy
from wsss_pl.labeling.online_cache import (  # noqa: F401  (environment_notice: re-exported)
    _CachedTarget,
    environment_notice,
    read_manifest_environment,
)
from wsss_pl.labeling.rules import (
    PRESETS,
    CaptionStyle,
    ImageResize,
    PhraseRule,
    Preset,
)
from wsss_pl.labeling.segmenters import SegmenterSpec
from wsss_pl.labeling.segmenters.chunks import DEFAULT_DECODER_BATCH_SIZE, PaddingCounts
from wsss_pl.labeling.storage.cache import PseudoLabelCache
from wsss_pl.labeling.storage.corrections import CORRECTIONS_DIR, CorrectionsLayer
from wsss_pl.labeling.storage.writer import CacheWriter, to_cpu_once

log = logging.getLogger(__name__)

TINY = "tiny"  # model name of the tiny randomly initialised models (demos and tests)
REVIEW_SAMPLES = 8  # labelled samples kept per epoch for the review callback


class OnlinePseudoLabels(DetectorRows, LabelSource):
    """Grounding DINO + SAM pseudo-labels, made lazily per sample on the device and cached.

    A label depends on the image, its classes and these settings only: with ``batch_mode:
    fixed`` (default) the models batch, but every forward has one fixed shape, so neither its
    batch mates, its position, the GPU count nor the order changes a bit of it
    (``wsss_pl.labeling.invariance``).

    Args:
        preset: ``paper`` (default): the released code's labelling rules, i.e. caption_style
            ``paper`` (raw VOC names + assist words joined by ``"."``, COCO names by ``" . "``,
            ``"."`` appended), phrase_rule ``argmax_word`` (arg-max token over the whole caption
            grown to its word, looked up; text_threshold unused), image_resize ``pil`` (PIL
            bilinear detector input with groundingdino's size rule; SAM input as
            ``SamPredictor.set_image``) and clip_boxes ``false``. ``wsss_pl``: readable prompt
            names with ``" . "``, the best class token above text_threshold, torch resizes on the
            device, boxes clipped. The four options below override single rules of the preset.
        caption_style: ``paper`` or ``prompt_names`` (see ``wsss_pl.labeling.detectors.prompt``).
        phrase_rule: ``argmax_word`` or ``best_class_token`` (see ``wsss_pl.labeling.detectors.prompt``).
        image_resize: ``pil`` or ``tensor`` (detector and SAM inputs; see ``GroundingDetector``).
        clip_boxes: clip boxes to the image before SAM.
        batch_mode: ``fixed`` (default): the detector runs same-shape images exactly
            ``detector_batch_size`` at a time and the SAM encoder exactly
            ``sam_encoder_batch_size`` at a time, short batches filled with zero images,
            captions padded to 256 tokens, Grounding DINO's softmax shift per image: batched
            and bit-identical whatever the batch. ``per_image``: every image alone through both
            models (the released code's calls; differs from ``fixed`` in the last bits of the
            caption padding). ``free``: same-shape images batched as they come, unpadded
            (labels can move in the last bits with their batch mates).
        detector_batch_size: rows of every detector forward in ``fixed`` mode.
        cpu_threads: intra-op threads while labelling on a CPU (the thread count changes bits).
        cache_root: cache directory; labels go to ``<cache_root>/<dataset>/<fingerprint>/``.
        detector: Grounding DINO: a registry name (``grounding-dino-tiny`` is the paper's Swin-T),
            a hub id, a local directory, or ``tiny`` (random tiny model, for demos and tests);
            or another detector as a class_path (``wsss_pl.labeling.detectors``:
            ``GroundingDinoSpec``, ``MMGroundingDinoSpec``, ``OwlV2Spec``, ``OmDetTurboSpec``;
            SAM 3: ``wsss_pl.labeling.detectors.sam3.Sam3Spec``, which makes the masks itself, so no SAM
            runs).
            A string is ``GroundingDinoSpec(model=...)`` with the same cache fingerprint.
        sam_type: SAM backbone ``vit_h`` (paper), ``vit_l`` or ``vit_b``.
        sam_checkpoint: registry name (``sam_vit_h``...), a file path, or ``tiny``.
        box_threshold, text_threshold: Grounding DINO thresholds (paper: 0.3 / 0.25).
        merge_policy, conflict, missing_class_policy, retry_box_threshold: see ``PseudoLabeler``.
        prompt_names, assist_words: per-class overrides of the dataset vocabulary's prompts.
        exclusion_words: per class, phrases that are detected but whose masks are removed from
            the class (the complement of assist words), e.g. ``{diningtable: [plate, glass]}``.
        exclusion_fill: removed pixels become ``background`` or ``ignore`` (255).
        segmenter: another box -> mask model (``wsss_pl.labeling.segmenters``: ``HQSamSpec``...);
            None uses ``sam_type`` / ``sam_checkpoint`` (segment-anything SAM).
        detector_image_size: shorter side of the detector input (800 as Grounding DINO).
        detector_pad_to_canvas: pad every image to a fixed canvas (by orientation) instead of
            running it at its own size; costs compute on the padding.
        sam_encoder_batch_size: images per SAM image-encoder call (exactly, in ``fixed`` mode).
        sam_decoder_batch_size: boxes per SAM mask-decoder call (exactly, copies of the last box
            filling a short chunk, in ``fixed`` mode): bounds the decoder's memory whatever an
            image's box count (``wsss_pl.labeling.segmenters.chunks``). Fingerprinted.
        precision: ``32`` (the paper) or ``bf16`` autocast for both models (much faster on
            recent GPUs; boxes and masks can differ slightly, so it is part of the fingerprint).
        download: fetch missing checkpoints (with checksums) when the machine has internet.
        sam_attention: SAM image-encoder attention, ``original`` or ``sdpa`` (fused kernel, same
            weights and math; fp32 embeddings agree to ~1e-5, i.e. float rounding, like another
            GPU or kernel would give, so it is not part of the cache fingerprint).
        sam_compile: ``torch.compile`` SAM's encoder blocks (speed only; not fingerprinted).
        write_workers: threads that RLE-encode and write labels in the background
            (``wsss_pl.labeling.storage.writer``); 0 writes in the labelling thread. Flushed before an
            epoch or the label pass ends and before a checkpoint (``FlushLabelWrites``).
    """

    def __init__(
        self,
        cache_root: str = "pseudo_labels",
        preset: Preset = "paper",
        caption_style: CaptionStyle | None = None,
        phrase_rule: PhraseRule | None = None,
        image_resize: ImageResize | None = None,
        clip_boxes: bool | None = None,
        batch_mode: BatchMode = "fixed",
        detector: str | DetectorSpec = "grounding-dino-tiny",
        sam_type: Literal["vit_h", "vit_l", "vit_b"] = "vit_h",
        sam_checkpoint: str = "sam_vit_h",
        box_threshold: float = 0.3,
        text_threshold: float = 0.25,
        merge_policy: MergePolicy = "paper",
        conflict: ConflictPolicy = "keep",
        missing_class_policy: MissingClassPolicy = "leave",
        retry_box_threshold: float = 0.2,
        prompt_names: dict[str, str] | None = None,
        assist_words: dict[str, list[str]] | None = None,
        detector_image_size: int = 800,
        detector_pad_to_canvas: bool = False,
        sam_encoder_batch_size: int = 4,
        detector_batch_size: int = 4,
        sam_decoder_batch_size: int = DEFAULT_DECODER_BATCH_SIZE,
        cpu_threads: int = 1,
        precision: Literal["32", "bf16"] = "32",
        download: bool = True,
        exclusion_words: dict[str, list[NotEmptyStr]] | None = None,
        exclusion_fill: Literal["background", "ignore"] = "background",
        segmenter: SegmenterSpec | None = None,
        sam_attention: Literal["original", "sdpa"] = "original",
        sam_compile: bool = False,
        write_workers: NonNegativeInt = 2,  # type: ignore[assignment]
    ) -> None:
        if preset not in PRESETS:
            raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}")
        self.cache_root = cache_root
        self.preset = preset
        rules = PRESETS[preset]
        self.caption_style: CaptionStyle = caption_style or rules["caption_style"]
        self.phrase_rule: PhraseRule = phrase_rule or rules["phrase_rule"]
        self.image_resize: ImageResize = image_resize or rules["image_resize"]
        self.clip_boxes: bool = rules["clip_boxes"] if clip_boxes is None else clip_boxes
        if batch_mode not in BATCH_MODES:
            raise ValueError(f"batch_mode must be one of {BATCH_MODES}, got {batch_mode!r}")
        for key, value in (
            ("detector_batch_size", detector_batch_size),
            ("sam_encoder_batch_size", sam_encoder_batch_size),
            ("sam_decoder_batch_size", sam_decoder_batch_size),
            ("cpu_threads", cpu_threads),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{key} must be an integer >= 1, got {value!r}")
        self.batch_mode: BatchMode = batch_mode
        self.detector_batch_size = detector_batch_size
        self.cpu_threads = cpu_threads
        self.device: torch.device | None = None  # the labelling device (fingerprinted)
        self.detector_spec: DetectorSpec = (
            detector
            if isinstance(detector, DetectorSpec)
            else GroundingDinoSpec(detector, download=download)
        )
        self.detector_name = detector if isinstance(detector, str) else self.detector_spec.name
        self.sam_type = sam_type
        self.sam_checkpoint = sam_checkpoint
        self.box_threshold = box_threshold
        self.text_threshold = text_threshold
        self.merge_policy: MergePolicy = merge_policy
        self.conflict: ConflictPolicy = conflict
        self.missing_class_policy: MissingClassPolicy = missing_class_policy
        self.retry_box_threshold = retry_box_threshold
        self.prompt_names = prompt_names
        self.assist_words = assist_words
        self.detector_image_size = detector_image_size
        self.detector_pad_to_canvas = detector_pad_to_canvas
        self.sam_encoder_batch_size = sam_encoder_batch_size
        self.sam_decoder_batch_size = sam_decoder_batch_size
        self.precision = precision
        self.download = download
        self.exclusion_words = exclusion_words
        self.exclusion_fill: Literal["background", "ignore"] = exclusion_fill
        self.segmenter = segmenter
        self.sam_attention: Literal["original", "sdpa"] = sam_attention
        self.sam_compile = sam_compile
        self.write_workers = write_workers
        self._writer: CacheWriter | None = None
        self.cache: PseudoLabelCache | None = None
        self.vocabulary: ClassVocabulary | None = None
        self._labeler: PseudoLabeler | None = None
        self.num_labelled = 0
        self.missing_counts: Counter[str] = Counter()
        self.num_unmatched_boxes = 0
        self.detector_padding = PaddingCounts()  # image rows of the detector, fixed mode
        # The last few labelled samples (CPU copies), for the W&B review of boxes and masks.
        self.recent: list[dict[str, Any]] = []

    # --- configuration -------------------------------------------------------------------
    def _vocabulary(self, source: DatasetSource) -> ClassVocabulary:
        base = source.vocabulary
        prompt_names = {**base.prompt_names, **(self.prompt_names or {})}
        assist = {
            **base.assist_words,
            **{k: tuple(v) for k, v in (self.assist_words or {}).items()},
        }
        vocabulary = dataclasses.replace(base, prompt_names=prompt_names, assist_words=assist)
        return with_exclusion_phrases(vocabulary, self.exclusion_words)

    def _detector_weights(self) -> dict[str, Any]:
        return self.detector_spec.settings()

    def _sam_weights(self) -> dict[str, Any]:
        if self.detector_spec.provides_masks:
            return {"type": "none: the detector makes the masks"}
        if self.segmenter is not None:
            return self.segmenter.settings()
        if self.sam_checkpoint == TINY:
            return {"type": TINY, "seed": 0}
        from wsss_pl.weights import checkpoint_fingerprint, resolve_checkpoint

        path = resolve_checkpoint(self.sam_checkpoint, download=self.download)
        return {"type": self.sam_type, "sha256": checkpoint_fingerprint(path), "path": str(path)}

    def settings(self, vocabulary: ClassVocabulary) -> dict[str, Any]:
        """Everything that changes the labels: the cache fingerprint is a hash of this."""
        detector, sam = self._detector_weights(), self._sam_weights()
        return {
            "detector": {k: v for k, v in detector.items() if k != "dir"},
            "sam": {k: v for k, v in sam.items() if k != "path"},
            "box_threshold": self.box_threshold,
            "text_threshold": self.text_threshold,
            "detector_image_size": self.detector_image_size,
            "detector_pad_to_canvas": self.detector_pad_to_canvas,
            # The resolved rules, not the preset's name: an equivalent explicit config shares.
            "caption_style": self.caption_style,
            "phrase_rule": self.phrase_rule,
            "image_resize": self.image_resize,
            "clip_boxes": self.clip_boxes,
            **self._batch_settings(),
            "precision": self.precision,
            "classes": list(vocabulary.class_names),
            "prompt_names": dict(vocabulary.prompt_names),
            "assist_words": {k: list(v) for k, v in vocabulary.assist_words.items()},
            "merge_policy": self.merge_policy,
            "conflict": self.conflict,
            "missing_class_policy": self.missing_class_policy,
            "retry_box_threshold": self.retry_box_threshold
            if self.missing_class_policy == "retry"
            else None,
        }

    def _batch_settings(self) -> dict[str, Any]:
        """Batching and the environment: what changes bits although the rules are the same."""
        batching: dict[str, Any] = {"batch_mode": self.batch_mode}
        if self.batch_mode == "fixed":
            batching["detector_batch_size"] = self.detector_batch_size
            batching["caption_tokens"] = CAPTION_TOKENS
        if self.batch_mode != "per_image":
            batching["sam_encoder_batch_size"] = self.sam_encoder_batch_size
        if not self.detector_spec.provides_masks:  # chunks change bits in every mode
            batching["sam_decoder_batch_size"] = self.sam_decoder_batch_size
        batching["environment"] = environment(self.device or "cpu", self.cpu_threads)
        return batching

    def bind_device(self, device: torch.device | str) -> None:
        """The device that will label (its model and libraries are part of the fingerprint);
        call before the cache opens (the DataModule does it from its trainer)."""
        self.device = torch.device(device)

    def _check_device(self, device: torch.device) -> None:
        """Labels made on another device than the fingerprint says must not enter the cache."""
        assert self.cache is not None
        expected = self.cache.settings.get("environment")
        actual = environment(device, self.cpu_threads)
        if expected is not None and expected != actual:
            raise CacheError(
                f"the pseudo-label cache {self.cache.directory} is fingerprinted for labelling "
                f"on {expected.get('device_type')} ({expected.get('device_name')}) but labels "
                f"would be made on {device} ({actual.get('device_name')}); labels of different "
                "devices differ in the last bits: run on the same device, or call "
                "bind_device() before the cache opens"
            )

    def _exclusion_settings(self) -> dict[str, Any]:
        """Fingerprint entries of the exclusion phrases; none without them (old caches stay valid)."""
        if not self.exclusion_words:
            return {}
        words = {k: list(v) for k, v in self.exclusion_words.items()}
        return {"exclusion_words": words, "exclusion_fill": self.exclusion_fill}

    def _open_cache(self, source: DatasetSource, announce: bool = False) -> PseudoLabelCache:
        if self.cache is None:
            self.vocabulary = self._vocabulary(source)
            cache = PseudoLabelCache(
                self.cache_root,
                source.name,
                {**self.settings(self.vocabulary), **self._exclusion_settings()},
                self.vocabulary.palette(),
            )
            notice = environment_notice(cache) if announce else None
            if notice:
                log.warning("%s", notice)
            cache.open()
            self.cache = cache
        return self.cache

    def prepare_data(self, source: DatasetSource) -> None:
        # rank 0 first: downloads checkpoints, writes the manifest; says so before labelling
        # starts when only the environment keeps it from an existing cache
        cache = self._open_cache(source, announce=True)
        removed = cache.remove_stale_temp_files()
        if removed:
            log.warning(
                "removed %d temp files of an interrupted earlier run from %s",
                removed,
                cache.directory,
            )
        log.info("pseudo-label cache %s holds %d labels", cache.directory, len(cache))

    def setup(self, source: DatasetSource) -> None:
        self._open_cache(source)

    def loader(self) -> TargetLoader:
        if self.cache is None:
            raise RuntimeError("OnlinePseudoLabels.setup must run before loader()")
        assert self.vocabulary is not None
        corrections = CorrectionsLayer(self.cache.root / self.cache.dataset / CORRECTIONS_DIR)
        return _CachedTarget(self.cache, self.vocabulary.class_names, corrections)

    # --- labelling on the device ---------------------------------------------------------
    def build_labeler(self) -> PseudoLabeler:
        """Build the frozen models (CPU); called once, on first need."""
        return build_pseudo_labeler(self)

    def labeler(self, device: torch.device) -> PseudoLabeler:
        if self._labeler is None:
            log.info(
                "building the pseudo-labeler (%s + SAM %s) on %s",
                self.detector_name,
                self.sam_type,
                device,
            )
            self._labeler = self.build_labeler()
        return self._labeler.to(device)

    def flush(self) -> None:
        """Wait for the background writes; raise a failed one (``CacheError`` naming the file)."""
        if self._writer is not None:
            self._writer.flush()

    def label_batch(self, batch: dict[str, Any]) -> None:
        """Label the samples of ``batch`` that need it, store them, and fill ``batch["target"]``."""
        if self.cache is None or self.vocabulary is None:
            raise RuntimeError("OnlinePseudoLabels.setup must run before label_batch")
        rows = torch.nonzero(batch["needs_label"]).flatten().tolist()
        if not rows:
            return
        sizes = batch["size"][rows].tolist()
        images = [batch["image"][i, :, :h, :w] for i, (h, w) in zip(rows, sizes, strict=True)]
        present = [self.vocabulary.names_of(batch["labels"][i].cpu()) for i in rows]
        # An empty label set (allowed by the dataset: a background-only image) needs no prompt:
        # the labeler returns all background for it without running the models.
        device = batch["image"].device
        labeler = self.labeler(device)
        labeler.encode_masks = False  # RLE in the writer threads, from one CPU copy per batch
        self._check_device(device)
        bf16 = self.precision == "bf16"
        with (
            deterministic_labelling(device, self.cpu_threads),
            torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16),
        ):
            results = labeler(images, present)
        self._count_detector_rows(images, present)
        if self._writer is None:
            self._writer = CacheWriter(self.cache, workers=self.write_workers)
        moved = to_cpu_once([t for r in results for t in (r.label, r.masks)])  # type: ignore[misc]
        for k, (i, (h, w), result) in enumerate(zip(rows, sizes, results, strict=True)):
            sample_id = batch["id"][i]
            label_cpu, masks_cpu = moved[2 * k], moved[2 * k + 1]
            self._writer.submit(
                sample_id, label_cpu, {"id": sample_id, **result.metadata}, masks_cpu
            )
            batch["target"][i, :h, :w] = result.label.to(batch["target"].device)
            batch["needs_label"][i] = False
            self.missing_counts.update(result.missing_classes)
            self.num_unmatched_boxes += result.num_unmatched_boxes
            if len(self.recent) < REVIEW_SAMPLES:
                gt = batch["gt"][i, :h, :w].cpu() if bool(batch["has_gt"][i]) else None
                image = batch["image"][i, :, :h, :w].cpu()
                self.recent.append(
                    {
                        "id": sample_id,
                        "image": image,
                        "label": label_cpu,
                        "gt": gt,
                        "metadata": result.metadata,
                    }
                )
        self.num_labelled += len(rows)
        missing = Counter(name for result in results for name in result.missing_classes)
        unmatched = sum(result.num_unmatched_boxes for result in results)
        # Per-batch counts that the LightningModule logs (summed over the epoch and ranks).
        batch["num_labelled"] = len(rows)
        batch["num_unmatched_boxes"] = unmatched
        batch["num_missing_classes"] = sum(missing.values())
        if missing or unmatched:
            log.info(
                "labelled %d images: %d boxes matched no prompted class; no box for %s",
                len(rows), unmatched, dict(missing) or "none",
            )  # fmt: skip
