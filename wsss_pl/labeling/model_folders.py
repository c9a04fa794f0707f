"""Model folders and checkpoint files as users download them: which family they hold, and loading
them with the class that family's own files name.

One place for every hub-folder family (detectors and segmenters alike):

- ``read_folder(directory)``: the folder's ``config.json`` ``model_type`` and ``architectures``.
- ``check_family(directory, family)``: a one-line ``WeightsError`` when the folder holds another
  family's model, naming the folder, its ``model_type`` and the spec that loads it.
- ``load_folder(directory, family)``: the model through the transformers class of the family
  (e.g. ``MMGroundingDinoForObjectDetection`` for ``model_type: mm-grounding-dino``), every
  library error wrapped in one line, and an error when weights the class needs are missing from
  the folder (transformers would only log that they were initialised at random).
- ``check_sam_state(path, state, family, model_type)``: the same for the official
  segment-anything / HQ-SAM ``.pth`` state dicts (which SAM, which ViT size).
"""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from wsss_pl.errors import WeightsError

_DETECTORS = "wsss_pl.labeling.detectors."
_SEGMENTERS = "wsss_pl.labeling.segmenters."


@dataclass(frozen=True)
class Family:
    """A model family that loads from a hub folder.

    Attributes:
        title: its name in messages.
        spec: the class_path of the spec that loads it.
        model_types: the ``config.json`` ``model_type`` values its folders have.
        model_class: the transformers class that loads the folder.
        processor_class: the transformers processor class of the folder (None: the spec's own).
    """

    title: str
    spec: str
    model_types: tuple[str, ...]
    model_class: str
    processor_class: str | None = None


FAMILIES: dict[str, Family] = {
    "grounding_dino": Family(
        "Grounding DINO",
        _DETECTORS + "GroundingDinoSpec",
        ("grounding-dino",),
        "GroundingDinoForObjectDetection",
    ),
    "mm_grounding_dino": Family(
        "MM-Grounding-DINO",
        _DETECTORS + "MMGroundingDinoSpec",
        ("mm-grounding-dino",),
        "MMGroundingDinoForObjectDetection",
    ),
    "owlv2": Family(
        "OWLv2", _DETECTORS + "OwlV2Spec", ("owlv2",), "Owlv2ForObjectDetection", "Owlv2Processor"
    ),
    "omdet_turbo": Family(
        "OmDet-Turbo",
        _DETECTORS + "OmDetTurboSpec",
        ("omdet-turbo",),
        "OmDetTurboForObjectDetection",
        "OmDetTurboProcessor",
    ),
    "sam3": Family(
        "SAM 3", _DETECTORS + "Sam3Spec", ("sam3", "sam3_video"), "Sam3Model", "Sam3Processor"
    ),
    "sam2": Family("SAM 2.1", _SEGMENTERS + "Sam2Spec", ("sam2", "sam2_video"), "Sam2Model"),
    # facebook/sam3 holds the tracker's weights too: its folder loads as either family.
    "sam3_tracker": Family(
        "SAM 3 tracker",
        _SEGMENTERS + "Sam3TrackerSpec",
        ("sam3_tracker", "sam3", "sam3_video"),
        "Sam3TrackerModel",
        "Sam3TrackerProcessor",
    ),
}
# model_types of other families users may download by mistake, and what to do with them.
_OTHER_MODEL_TYPES = {
    "sam": "segment-anything SAM in transformers' layout: wsss_pl loads the official .pth with "
    + _SEGMENTERS
    + "SamSpec",
    "sam_hq": "HQ-SAM in transformers' layout: wsss_pl loads the official sam_hq_vit_*.pth with "
    + _SEGMENTERS
    + "HQSamSpec",
    "owlvit": "OWL-ViT (v1): wsss_pl supports OWLv2 (" + _DETECTORS + "OwlV2Spec)",
}


def fitting_specs(model_type: str) -> str:
    """The spec(s) that load a folder of ``model_type``, for messages."""
    specs = [f.spec for f in FAMILIES.values() if model_type in f.model_types]
    if specs:
        return " or ".join(specs)
    return _OTHER_MODEL_TYPES.get(model_type, "no wsss_pl spec (not a supported model family)")


def read_folder(directory: str | Path) -> tuple[str, list[str]]:
    """``model_type`` and ``architectures`` of the folder's config.json ('?' / [] when absent)."""
    directory = Path(directory)
    config = directory / "config.json"
    if directory.is_file():
        raise WeightsError(
            f"{directory} is a file, not a model folder: pass the folder that holds config.json "
            "and the weights (SAM / HQ-SAM .pth files go to SamSpec / HQSamSpec as checkpoint)"
        )
    if not config.is_file():
        raise WeightsError(
            f"{directory} is not a model folder (no config.json): pass the folder that holds "
            "config.json and the weights (e.g. `hf download ORG/NAME --local-dir DIR`)"
        )
    try:
        data = json.loads(config.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise WeightsError(
            f"{config} is not readable JSON ({type(error).__name__}): download the folder again"
        ) from None
    if not isinstance(data, dict):
        raise WeightsError(f"{config} is not a model config (a JSON object): download it again")
    architectures = data.get("architectures") or []
    return str(data.get("model_type", "?")), [str(a) for a in architectures]


def check_family(directory: str | Path, family: str) -> Family:
    """The family entry, after checking that ``directory`` holds a model of it (else a one-line
    WeightsError naming the folder, what it holds and the spec that loads that)."""
    expected = FAMILIES[family]
    model_type, architectures = read_folder(directory)
    if model_type not in expected.model_types:
        holds = f"model_type {model_type!r}" + (
            f" ({', '.join(architectures)})" if architectures else ""
        )
        raise WeightsError(
            f"{directory} holds a {holds} model, not {expected.title} "
            f"({' / '.join(expected.model_types)}): use {fitting_specs(model_type)} for it, or "
            f"give {expected.spec.rsplit('.', 1)[1]} a folder of {expected.title}"
        )
    return expected


def _one_line(error: BaseException, limit: int = 200) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text[:limit]}{'...' if len(text) > limit else ''}"


def load_folder(directory: str | Path, family: str) -> tuple[torch.nn.Module, Any]:
    """The model (eval mode, on the CPU) and processor of a checked folder of ``family``.

    The model class is the family's (``FAMILIES``), never a neighbour's; missing weights (the
    class needs a weight the folder lacks, which transformers would initialise at random) and
    any library error are a one-line WeightsError naming the folder. The processor is None for
    families whose spec builds its own (Grounding DINO's BERT tokenizer, SAM 2's default).
    """
    import transformers

    from wsss_pl.weights import unsafe_pickle_error

    entry = check_family(directory, family)
    model_class = getattr(transformers, entry.model_class)
    try:
        model, info = model_class.from_pretrained(str(directory), output_loading_info=True)
        processor = None
        if entry.processor_class is not None:
            processor = getattr(transformers, entry.processor_class).from_pretrained(str(directory))
    except pickle.UnpicklingError as error:  # weights_only refused a pickle: nothing ran
        raise unsafe_pickle_error(Path(directory) / "pytorch_model.bin", error) from None
    except (OSError, ValueError, RuntimeError, KeyError, TypeError, AttributeError) as error:
        raise WeightsError(
            f"cannot load {entry.title} from {directory} with {entry.model_class} "
            f"({_one_line(error)}); download the folder again"
        ) from None
    missing = list(info.get("missing_keys") or [])
    if missing:
        raise WeightsError(
            f"{directory} lacks {len(missing)} weights of {entry.model_class} (such as "
            f"{', '.join(sorted(missing)[:2])}): it is not a complete {entry.title} checkpoint"
        )
    return model.eval(), processor


SamFamily = Literal["sam", "hq_sam"]
_VIT_WIDTHS = {768: "vit_b", 1024: "vit_l", 1280: "vit_h"}
_SAM_SPECS = {"sam": _SEGMENTERS + "SamSpec", "hq_sam": _SEGMENTERS + "HQSamSpec"}


def check_sam_state(
    path: str | Path, state: dict[str, torch.Tensor], family: SamFamily, model_type: str
) -> None:
    """A one-line WeightsError when the official-layout state dict at ``path`` is not a
    ``family`` (segment-anything SAM / HQ-SAM) checkpoint of ViT size ``model_type``."""
    if not any(key.startswith("image_encoder.") for key in state):
        raise WeightsError(
            f"{path} holds no SAM weights (no image_encoder.* keys; {len(state)} keys such as "
            f"{', '.join(sorted(state)[:2])}): pass a segment-anything / HQ-SAM .pth checkpoint"
        )
    holds: SamFamily = "hq_sam" if "mask_decoder.hf_token.weight" in state else "sam"
    if holds != family:
        title = {"sam": "a plain segment-anything SAM", "hq_sam": "an HQ-SAM"}
        raise WeightsError(
            f"{path} holds {title[holds]} checkpoint, not {title[family][2:].strip()}: use "
            f"{_SAM_SPECS[holds]} for it"
        )
    patch = state.get("image_encoder.patch_embed.proj.weight")
    size = _VIT_WIDTHS.get(int(patch.shape[0])) if patch is not None else None
    if patch is not None and size != model_type:
        width = int(patch.shape[0])
        spec = _SAM_SPECS[family].rsplit(".", 1)[1]
        if size:
            fix = f"set model_type: {size} on {spec}"
        else:
            fix = "not an official vit_b / vit_l / vit_h checkpoint"
        holds_size = f"{size} (width {width})" if size else f"a ViT of width {width}"
        raise WeightsError(f"{path} holds SAM weights of {holds_size}, not {model_type}: {fix}")


SAM3_HUB_ID = "facebook/sam3"


def sam3_folder(model: str, download: bool) -> Path:
    """The local folder of SAM 3 (``Sam3Spec`` / ``Sam3TrackerSpec``): a directory, ``sam3``
    (the HF hub cache copy) or a hub id; the checkpoint is gated, so a missing one is a
    WeightsError saying how to get it."""
    directory = Path(model).expanduser()
    if directory.is_dir():
        read_folder(directory)  # a folder without config.json: say so
        return directory
    hub_id = model.count("/") == 1 and not model.startswith((".", "/", "~"))
    if model != "sam3" and not hub_id:
        raise WeightsError(
            f"SAM 3 model directory not found: {model!r} (neither a directory nor 'sam3' / a "
            f"hub id). The checkpoint is gated: accept its licence at "
            f"https://huggingface.co/{SAM3_HUB_ID}, then on a machine with internet run "
            f"`hf auth login && hf download {SAM3_HUB_ID} --local-dir DIR`, copy DIR here and "
            "pass it as the model"
        )
    from wsss_pl.weights import resolve_hub_model  # the hub cache, or the gated message

    return Path(resolve_hub_model(model, download=download))


def check_sam_path(path: str | Path, family: SamFamily) -> None:
    """A one-line WeightsError when a SAM / HQ-SAM checkpoint path is a folder (a hub folder of
    some family, or none): those specs take the official ``.pth`` file."""
    path = Path(path)
    if not path.is_dir():
        return
    spec = _SAM_SPECS[family].rsplit(".", 1)[1]
    if (path / "config.json").is_file():
        model_type, _ = read_folder(path)
        raise WeightsError(
            f"{path} is a model folder holding a model_type {model_type!r} model, not a "
            f"{spec} checkpoint file (.pth): use {fitting_specs(model_type)} for it"
        )
    raise WeightsError(f"{path} is a folder, not a {spec} checkpoint file (.pth): pass the file")
