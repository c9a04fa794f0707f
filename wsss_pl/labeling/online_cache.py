"""The cache side of ``OnlinePseudoLabels``: the worker-side loader of cached labels (a
reviewer's correction first) and the notice printed before labelling into a new cache directory
when labels made with the same settings in another environment exist beside it."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from wsss_pl.data.base import Sample
from wsss_pl.errors import CacheError
from wsss_pl.labeling.storage.cache import MANIFEST_NAME, PseudoLabelCache
from wsss_pl.labeling.storage.corrections import CorrectionsLayer

log = logging.getLogger(__name__)


class _CachedTarget:
    """Worker-side loader: the cached label of a sample, or None when it must be made.

    A label made for other image-level classes (the labels file was corrected since) is stale:
    it is made again rather than trained on.
    """

    def __init__(
        self,
        cache: PseudoLabelCache,
        class_names: tuple[str, ...],
        corrections: CorrectionsLayer | None = None,
    ) -> None:
        self.cache = cache
        self.class_names = class_names
        self.corrections = corrections

    def __call__(self, sample: Sample) -> torch.Tensor | None:
        if self.corrections is not None:  # a reviewer's label wins over the pseudo-label
            corrected = self.corrections.load(sample["id"])
            if corrected is not None:
                if corrected.shape != sample["image"].shape[1:]:
                    raise CacheError(
                        f"corrected label {self.corrections.path(sample['id'])} is "
                        f"{tuple(corrected.shape)} but image {sample['id']} is "
                        f"{tuple(sample['image'].shape[1:])}; re-import it for this image"
                    )
                return corrected
        label = self.cache.load(sample["id"])
        if label is None:
            return None
        metadata = self.cache.load_metadata(sample["id"]) or {}
        present = [
            self.class_names[i] for i in torch.nonzero(sample["labels"] > 0).flatten().tolist()
        ]
        if sorted(metadata.get("classes") or ()) != sorted(present):  # order carries no meaning
            log.warning(
                "%s: cached pseudo-label was made for classes %s, the image is now labelled %s; "
                "labelling it again", sample["id"], metadata.get("classes"), present,
            )  # fmt: skip
            return None
        if label.shape != sample["image"].shape[1:]:
            raise CacheError(
                f"cached pseudo-label {self.cache.path(sample['id'])} is {tuple(label.shape)} but "
                f"image {sample['id']} is {tuple(sample['image'].shape[1:])}; the cache belongs to "
                "other images: point cache_root elsewhere or delete that directory"
            )
        return label


# How to get back the environment of an existing cache, per entry of ``environment()``.
_PACKAGES = {
    "torch": "torch",
    "transformers": "transformers",
    "segment_anything": "segment-anything",
}


def environment_notice(cache: PseudoLabelCache) -> str | None:
    """The warning to print before labelling into a new cache directory when another directory
    of the same dataset holds labels made with the same settings in another environment (library
    versions, device, CPU threads): which directory, what differs, how to reuse it. None when
    the cache exists already or no such sibling exists."""
    if cache.manifest_path.is_file():
        return None
    siblings = [s for s in cache.environment_siblings() if s[2] > 0]
    if not siblings:
        return None
    directory, changes, count = siblings[0]
    old = read_manifest_environment(directory)
    advice = []
    for key, value in old.items():
        if value == cache.settings.get("environment", {}).get(key):
            continue
        if key in _PACKAGES:
            advice.append(f"pip install '{_PACKAGES[key]}=={value}'")
        elif key == "cpu_threads":
            advice.append(f"--data.train_labels.init_args.cpu_threads {value}")
        elif key == "mkl_cbwr":
            advice.append("unset MKL_CBWR" if value is None else f"export MKL_CBWR={value}")
        elif key in ("device_type", "device_name", "cuda", "cudnn"):
            advice.append(
                f"label on the device it was made on ({old.get('device_type')}: "
                f"{old.get('device_name')}"
                + (f", CUDA {old.get('cuda')})" if old.get("device_type") == "cuda" else ")")
            )
    advice = list(dict.fromkeys(advice)) or ["the values listed"]
    return (
        f"pseudo-label cache: {directory} holds {count} labels made with these settings in another "
        f"environment ({'; '.join(changes)}), so this run starts a new, empty cache "
        f"{cache.directory} and labels every image again. To reuse those labels instead, stop "
        f"now and restore that environment: {'; '.join(advice)}."
    )


def read_manifest_environment(directory: Path) -> dict[str, Any]:
    """The ``environment`` settings entry of a cache directory's manifest ({} if none)."""
    from wsss_pl.io import read_json

    environment_entry = read_json(directory / MANIFEST_NAME).get("settings", {}).get("environment")
    return environment_entry if isinstance(environment_entry, dict) else {}
