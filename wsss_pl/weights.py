"""Known checkpoints (URL, sha256), cached downloads, hub models, and safe state-dict loading.

A checkpoint is named either by a path (used as is) or by a registry name such as ``sam_vit_h``,
which resolves to ``<cache>/<filename>``, downloaded and verified when missing. Grounding DINO comes
from the Hugging Face hub as a model directory. Loading always uses ``weights_only=True``.
"""

from __future__ import annotations

import logging
import os
import pickle
import shutil
import threading
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from wsss_pl.download import (
    download_file,
    file_sha256,
    read_sha256_sidecar,
    write_sha256_sidecar,
)
from wsss_pl.errors import WeightsError

log = logging.getLogger(__name__)

CACHE_ENV = "WSSS_PL_CACHE"


@dataclass(frozen=True)
class Checkpoint:
    """A downloadable checkpoint file with its expected sha256 (full or prefix).

    ``archive_member``: the URL is a zip archive and the checkpoint is this member of it
    (extracted to ``filename``; the archive is deleted afterwards). ``unverified``: why no
    checksum is pinned (none published); the file's sha256 is then logged for comparison.
    """

    name: str
    url: str
    filename: str
    sha256: str | None = None
    sha256_prefix: str | None = None
    description: str = ""
    size_bytes: int | None = None
    archive_member: str | None = None
    unverified: str = ""
    licence: str = ""

    def __post_init__(self) -> None:
        given = (self.sha256 is not None) + (self.sha256_prefix is not None)
        if (given != 1 and not self.unverified) or (given and self.unverified):
            raise ValueError(
                f"checkpoint {self.name!r}: give exactly one of sha256, sha256_prefix, or "
                "unverified (the reason none is published)"
            )

    def matches(self, digest: str) -> bool:
        """Whether a file's sha256 hex digest is the expected one (any, when unverified)."""
        if self.unverified:
            return True
        if self.sha256 is not None:
            return digest == self.sha256
        return digest.startswith(str(self.sha256_prefix))

    @property
    def expected(self) -> str:
        if self.unverified:
            return f"no pinned checksum: {self.unverified}"
        return f"sha256 {self.sha256}" if self.sha256 else f"sha256 prefix {self.sha256_prefix}"


_SAM = "https://dl.fbaipublicfiles.com/segment_anything/"
_TORCHVISION = "https://download.pytorch.org/models/"

CHECKPOINTS: dict[str, Checkpoint] = {
    checkpoint.name: checkpoint
    for checkpoint in (
        # SAM sha256 + sizes: computational-cell-analytics/micro-sam, micro_sam/util.py
        # (_CHECKSUMS, which verifies every download from these URLs); the same three digests
        # are pinned independently by several other public projects.
        Checkpoint(
            name="sam_vit_h",
            url=_SAM + "sam_vit_h_4b8939.pth",
            filename="sam_vit_h_4b8939.pth",
            sha256="a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
            description="SAM ViT-H (default mask model, 2.4 GiB)",
            size_bytes=2_564_550_879,
            licence="Apache-2.0",
        ),
        Checkpoint(
            name="sam_vit_l",
            url=_SAM + "sam_vit_l_0b3195.pth",
            filename="sam_vit_l_0b3195.pth",
            sha256="3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
            description="SAM ViT-L (1.2 GiB)",
            size_bytes=1_249_524_607,
            licence="Apache-2.0",
        ),
        Checkpoint(
            name="sam_vit_b",
            url=_SAM + "sam_vit_b_01ec64.pth",
            filename="sam_vit_b_01ec64.pth",
            sha256="ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
            description="SAM ViT-B (358 MiB)",
            size_bytes=375_042_383,
            licence="Apache-2.0",
        ),
        # torchvision names its files <arch>-<first 8 hex of sha256>.pth and checks that prefix
        # (torch.hub check_hash); URLs from torchvision 0.29 ResNet*_Weights.IMAGENET1K_V1.
        Checkpoint(
            name="resnet101_imagenet",
            url=_TORCHVISION + "resnet101-63fe2227.pth",
            filename="resnet101-63fe2227.pth",
            sha256_prefix="63fe2227",
            description="torchvision ResNet-101 ImageNet-1k V1 (DeepLab-v2 backbone init)",
            licence="BSD-3-Clause (torchvision)",
        ),
        Checkpoint(
            name="resnet50_imagenet",
            url=_TORCHVISION + "resnet50-0676ba61.pth",
            filename="resnet50-0676ba61.pth",
            sha256_prefix="0676ba61",
            description="torchvision ResNet-50 ImageNet-1k V1",
            licence="BSD-3-Clause (torchvision)",
        ),
        Checkpoint(  # torchvision 0.29 MobileNet_V3_Large_Weights.IMAGENET1K_V1 (LR-ASPP backbone)
            name="mobilenet_v3_large_imagenet",
            url=_TORCHVISION + "mobilenet_v3_large-8738ca79.pth",
            filename="mobilenet_v3_large-8738ca79.pth",
            sha256_prefix="8738ca79",
            description="torchvision MobileNetV3-Large ImageNet-1k V1 (light segmenter backbone)",
            licence="BSD-3-Clause (torchvision)",
        ),
        # DeepLab-v2's COCO-trained ResNet-101 (the paper's VOC init), the init.caffemodel of
        # the release zip (URL: DeepLab-v2 project page and kazuto1011/deeplab-pytorch
        # scripts/setup_caffemodels.sh). Loaded as a caffemodel (wsss_pl.models.caffe).
        Checkpoint(
            name="deeplabv2_coco_init",
            url="http://liangchiehchen.com/projects/released/deeplab_aspp_resnet101/"
            "prototxt_and_model.zip",
            filename="deeplabv2_resnet101_coco_init.caffemodel",
            archive_member="init.caffemodel",
            unverified="the DeepLab-v2 release publishes no checksum for this zip or its files",
            description="DeepLab-v2 ResNet-101 COCO init (Caffe, BGR input; the paper's VOC init)",
            licence="not stated by the DeepLab-v2 release",
        ),
    )
}


@dataclass(frozen=True)
class HubModel:
    """A Hugging Face hub model repository and the files a transformers model needs from it."""

    name: str
    repo_id: str
    revision: str | None = None  # None: the repo's default branch
    required_files: tuple[str, ...] = ("config.json",)
    optional_files: tuple[str, ...] = ()
    description: str = ""
    licence: str = ""  # the model card's licence
    gated: bool = False  # the hub asks to accept a licence first: download it yourself


_GROUNDING_DINO_FILES = (
    "config.json",
    "model.safetensors",
    "preprocessor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
)

# Revisions are left at the default branch: no commit of these repos was verified here to hold
# every required file. The resolved snapshot directory names its commit for the cache fingerprint.
HUB_MODELS: dict[str, HubModel] = {
    model.name: model
    for model in (
        HubModel(
            name="grounding-dino-tiny",
            repo_id="IDEA-Research/grounding-dino-tiny",
            required_files=_GROUNDING_DINO_FILES,
            optional_files=("added_tokens.json",),
            description="Grounding DINO Swin-T (the paper's detector, 689 MB)",
            licence="Apache-2.0",
        ),
        HubModel(
            name="grounding-dino-base",
            repo_id="IDEA-Research/grounding-dino-base",
            required_files=_GROUNDING_DINO_FILES,
            optional_files=("added_tokens.json",),
            description="Grounding DINO Swin-B (933 MB)",
            licence="Apache-2.0",
        ),
        HubModel(  # id from the transformers MM Grounding DINO docs
            name="mm-grounding-dino-tiny",
            repo_id="openmmlab-community/mm_grounding_dino_tiny_o365v1_goldg_v3det",
            required_files=_GROUNDING_DINO_FILES[:2],
            optional_files=_GROUNDING_DINO_FILES[2:] + ("added_tokens.json",),
            description="MM-Grounding-DINO Swin-T (o365v1 + goldg + v3det; MMDetection's re-trained "
            "Grounding DINO; a labeller alternative, wsss_pl.labeling.detectors.MMGroundingDinoSpec)",
            licence="Apache-2.0",
        ),
        HubModel(
            name="owlv2-base",
            repo_id="google/owlv2-base-patch16-ensemble",
            required_files=("config.json", "model.safetensors", "preprocessor_config.json"),
            optional_files=(
                "tokenizer.json",
                "tokenizer_config.json",
                "special_tokens_map.json",
                "vocab.json",
                "merges.txt",
            ),  # fmt: skip
            description="OWLv2 ViT-B/16 ensemble (wsss_pl.labeling.detectors.OwlV2Spec)",
            licence="Apache-2.0",
        ),
        HubModel(
            name="owlv2-large",
            repo_id="google/owlv2-large-patch14-ensemble",
            required_files=("config.json", "model.safetensors", "preprocessor_config.json"),
            optional_files=(
                "tokenizer.json",
                "tokenizer_config.json",
                "special_tokens_map.json",
                "vocab.json",
                "merges.txt",
            ),  # fmt: skip
            description="OWLv2 ViT-L/14 ensemble",
            licence="Apache-2.0",
        ),
        HubModel(
            name="omdet-turbo",
            repo_id="omlab/omdet-turbo-swin-tiny-hf",
            required_files=("config.json", "model.safetensors"),
            optional_files=(
                "preprocessor_config.json",
                "processor_config.json",
                "tokenizer.json",
                "tokenizer_config.json",
                "special_tokens_map.json",
                "vocab.json",
                "merges.txt",
            ),  # fmt: skip
            description="OmDet-Turbo Swin-T (wsss_pl.labeling.detectors.OmDetTurboSpec)",
            licence="Apache-2.0",
        ),
        HubModel(
            name="sam3",
            repo_id="facebook/sam3",
            required_files=("config.json", "model.safetensors"),
            optional_files=(
                "processor_config.json",
                "preprocessor_config.json",
                "tokenizer.json",
                "tokenizer_config.json",
                "special_tokens_map.json",
                "vocab.json",
                "merges.txt",
            ),  # fmt: skip
            description="SAM 3 (Meta, Nov 2025): text-prompted instance + semantic masks "
            "(wsss_pl.labeling.detectors.sam3.Sam3Spec). Gated: accept the SAM License on the hub page, "
            "download it with `hf download facebook/sam3 --local-dir DIR` and pass DIR",
            licence="SAM License (Meta; gated)",
            gated=True,
        ),
    )
}


def default_cache_dir() -> Path:
    """``$WSSS_PL_CACHE/checkpoints``, else ``${XDG_CACHE_HOME:-~/.cache}/wsss_pl/checkpoints``."""
    root = os.environ.get(CACHE_ENV)
    if root:
        return Path(root).expanduser() / "checkpoints"
    return (
        Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser()
        / "wsss_pl"
        / "checkpoints"
    )


def _known_names() -> str:
    return ", ".join(f"{name} ({c.description})" for name, c in CHECKPOINTS.items())


def resolve_checkpoint(
    name_or_path: str | Path, cache_dir: str | Path | None = None, download: bool = True
) -> Path:
    """Path of a checkpoint given as an existing path or as a registry name.

    A registry name resolves to ``cache_dir / filename`` (default :func:`default_cache_dir`);
    a missing or damaged file is downloaded and verified when ``download`` is true, otherwise a
    WeightsError says which URL to fetch and exactly where to put it.
    """
    candidate = Path(name_or_path).expanduser()
    if candidate.exists():
        return candidate
    checkpoint = CHECKPOINTS.get(str(name_or_path))
    if checkpoint is None:
        raise WeightsError(
            f"checkpoint {str(name_or_path)!r} is neither an existing file nor a known name; "
            f"pass the path of a checkpoint file or one of: {_known_names()}"
        )
    target = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    target = target / checkpoint.filename
    if target.is_file():
        digest = checkpoint_fingerprint(target)
        if checkpoint.matches(digest):
            return target
        if not download:
            raise WeightsError(
                f"{target} has sha256 {digest} but {checkpoint.name} must have "
                f"{checkpoint.expected}: "
                f"the file is damaged or a different version; delete it and download "
                f"{checkpoint.url} again (or allow downloading)"
            )
        log.warning("%s fails its checksum; downloading %s again", target, checkpoint.url)
    elif not download:
        extract = (
            f", extract {checkpoint.archive_member} from it"
            if checkpoint.archive_member is not None
            else ""
        )
        raise WeightsError(
            f"checkpoint {checkpoint.name} ({checkpoint.description}) is not at {target} and "
            f"downloading is off: download {checkpoint.url} on a machine with internet access"
            f"{extract} and put it at exactly {target} ({checkpoint.expected}), or pass the file's "
            "path instead of the name"
        )
    if checkpoint.archive_member is not None:
        return _download_member(checkpoint, target)
    path = download_file(
        checkpoint.url,
        target,
        sha256=checkpoint.sha256,
        sha256_prefix=checkpoint.sha256_prefix,
        error_type=WeightsError,
    )
    if checkpoint.unverified:
        log.warning(
            "%s: %s; its sha256 is %s", path, checkpoint.expected, checkpoint_fingerprint(path)
        )
    return path


def _download_member(checkpoint: Checkpoint, target: Path) -> Path:
    """Download ``checkpoint``'s zip next to ``target`` (resumable, with progress), extract its
    ``archive_member`` to ``target`` atomically, then delete the zip."""
    member = str(checkpoint.archive_member)
    archive = target.with_name(target.name + ".zip")
    download_file(checkpoint.url, archive, error_type=WeightsError)
    part = target.with_name(target.name + ".extracting")
    try:
        with (
            zipfile.ZipFile(archive) as zipped,
            zipped.open(member) as source,
            part.open("wb") as out,
        ):
            shutil.copyfileobj(source, out, 1 << 20)
    except KeyError as error:
        part.unlink(missing_ok=True)
        raise WeightsError(
            f"{archive} (from {checkpoint.url}) has no member {member!r}: the release changed; "
            f"put the file at {target} by hand"
        ) from error
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        part.unlink(missing_ok=True)
        archive.unlink(missing_ok=True)  # a damaged archive: the next call downloads it again
        raise WeightsError(
            f"cannot extract {member} from {archive} ({error}); the download is damaged and was "
            "deleted: run again to download it anew"
        ) from error
    digest = file_sha256(part)
    if not checkpoint.matches(digest):
        part.unlink(missing_ok=True)
        raise WeightsError(
            f"{member} from {checkpoint.url} has sha256 {digest}, expected {checkpoint.expected}"
        )
    os.replace(part, target)
    write_sha256_sidecar(target, digest)
    archive.unlink(missing_ok=True)
    archive.with_name(archive.name + ".sha256").unlink(missing_ok=True)  # download_file's record
    if checkpoint.unverified:
        log.warning("%s: %s; its sha256 is %s", target, checkpoint.expected, digest)
    return target


_FINGERPRINTS: dict[tuple[str, int, int], str] = {}
_FINGERPRINTS_LOCK = threading.Lock()


def checkpoint_fingerprint(path: str | Path) -> str:
    """sha256 of a checkpoint file, hashed at most once per (path, size, mtime).

    Memoised in the process and recorded in a ``<file>.sha256`` sidecar, so a 2.5 GB SAM file is
    read once, not on every run that fingerprints the pseudo-label cache.
    """
    path = Path(path).expanduser().resolve()
    try:
        info = path.stat()
    except OSError as error:
        raise WeightsError(f"cannot fingerprint checkpoint {path}: {error}") from error
    key = (str(path), info.st_size, info.st_mtime_ns)
    with _FINGERPRINTS_LOCK:
        cached = _FINGERPRINTS.get(key)
    if cached is not None:
        return cached
    digest = read_sha256_sidecar(path)
    if digest is None:
        digest = file_sha256(path)
        write_sha256_sidecar(path, digest)
    with _FINGERPRINTS_LOCK:
        _FINGERPRINTS[key] = digest
    return digest


def resolve_hub_model(
    name_or_dir: str | Path, download: bool = True, cache_dir: str | Path | None = None
) -> str:
    """Local directory of a transformers model given as a directory, registry name or hub id.

    A directory containing ``config.json`` is returned as is. Otherwise the name (a key of
    :data:`HUB_MODELS` or an ``owner/repo`` id) is fetched with
    ``huggingface_hub.snapshot_download`` into the hub cache (``cache_dir`` or the HF default); with ``download=False`` or
    ``HF_HUB_OFFLINE=1`` only the cache is used. Missing files raise a WeightsError that says how to
    fetch the model on another machine and which directory to pass instead.
    """
    directory = Path(name_or_dir).expanduser()
    if directory.is_dir():
        if (directory / "config.json").is_file():
            return str(directory)
        raise WeightsError(
            f"{directory} is not a model directory (no config.json); pass the folder that "
            "holds config.json and the weights, or a known model name: " + ", ".join(HUB_MODELS)
        )
    model = _hub_model(str(name_or_dir))
    fetched = hub_local_dir(model)  # where `wsss_pl fetch` puts it
    if all((fetched / name).is_file() for name in model.required_files):
        return str(fetched)
    offline = not download or hub_offline()
    from huggingface_hub import snapshot_download

    try:
        local = snapshot_download(
            model.repo_id,
            revision=model.revision,
            cache_dir=None if cache_dir is None else str(cache_dir),
            allow_patterns=[*model.required_files, *model.optional_files],
            local_files_only=offline,
        )
    except Exception as error:  # hub, network and offline-cache errors all mean the same to users
        reason = (
            "not in the wsss_pl cache nor in the Hugging Face cache"
            if offline
            else "the download from the hub failed"
        )
        if os.environ.get("WSSS_PL_DEBUG"):  # the library's own text only when asked for
            reason += f" ({type(error).__name__}: {_one_line(str(error))})"
        raise WeightsError(_hub_help(model, offline, reason)) from error
    missing = [name for name in model.required_files if not (Path(local) / name).is_file()]
    if missing:
        raise WeightsError(_hub_help(model, offline, f"{local} lacks {', '.join(missing)}"))
    return str(local)


def hub_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` asks for no network (then nothing is downloaded)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def hub_local_dir(model: HubModel | str) -> Path:
    """``$WSSS_PL_CACHE/hub/<name>``: the folder ``wsss_pl fetch`` downloads a hub model into
    (``hf download REPO --local-dir`` layout) and where ``resolve_hub_model`` looks first.
    Known models use their registry name, other hub ids ``owner--repo``."""
    if isinstance(model, str):
        model = _hub_model(model)
    folder = model.name if model.name in HUB_MODELS else model.repo_id.replace("/", "--")
    return default_cache_dir().parent / "hub" / folder


def _one_line(text: str) -> str:
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def _hub_model(name: str) -> HubModel:
    if name in HUB_MODELS:
        return HUB_MODELS[name]
    for model in HUB_MODELS.values():
        if model.repo_id == name:
            return model
    if name.count("/") == 1 and all(name.split("/")):
        return HubModel(name=name, repo_id=name)
    raise WeightsError(
        f"unknown hub model {name!r}: not a directory, not an 'owner/repo' hub id, and not one of "
        + ", ".join(f"{key} ({m.repo_id})" for key, m in HUB_MODELS.items())
    )


def _hub_help(model: HubModel, offline: bool, reason: str) -> str:
    mode = "offline" if offline else "online"
    if model.gated:
        return (
            f"could not get hub model {model.repo_id} ({mode}): {reason.rstrip('.')}. "
            f"It is gated ({model.licence}): accept its licence at "
            f"https://huggingface.co/{model.repo_id}, then on a machine with internet run "
            f"`hf auth login && hf download {model.repo_id} --local-dir {hub_local_dir(model)}` "
            f"and copy that folder to the same path here, or pass its path instead of "
            f"{model.name!r}"
        )
    revision = f" --revision {model.revision}" if model.revision else ""
    return (
        f"could not get hub model {model.repo_id} ({mode}): {reason.rstrip('.')}. "
        f"Where there is internet run `hf download {model.repo_id}{revision} --local-dir "
        f"{hub_local_dir(model)}` (or `python -m wsss_pl fetch --config CONFIG`) and copy that "
        f"folder here, or pass a folder's path instead of {model.name!r}"
    )


# Keys under which trainers commonly nest a state dict, tried in this order.
_CONTAINER_KEYS = ("state_dict", "model_state_dict", "model_state", "model", "net", "module")


def load_state_dict(path: str | Path, *, key: str | None = None) -> dict[str, torch.Tensor]:
    """Load a checkpoint's tensors on the CPU without running pickled code.

    Uses ``torch.load(weights_only=True)`` (or safetensors for ``*.safetensors``), unwraps common
    containers (``{"state_dict": ...}``, ``{"model": ...}``, ...) or the one named by ``key``
    (dots descend: ``"ema.model"``), and strips DDP's ``module.`` prefixes. A missing, truncated or
    non-tensor-only file raises a WeightsError naming the path and what to do.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsError(
            f"checkpoint file {path} does not exist; check the path, or use a registry name "
            f"({', '.join(CHECKPOINTS)}) to download a known checkpoint"
        )
    loaded = _load(path)
    obj = _select(loaded, key, path) if key is not None else _unwrap(loaded, path)
    state: dict[str, torch.Tensor] = {}
    for name, value in obj.items():
        if isinstance(value, torch.Tensor):
            state[_strip_module(str(name))] = value
    if not state:
        raise WeightsError(
            f"{path} holds no tensors under the selected entry; its keys are "
            f"{_describe_keys(loaded)}: pass key= naming the entry that holds the state dict"
        )
    if len(state) < len(obj):
        log.debug("%s: ignored %d non-tensor entries", path, len(obj) - len(state))
    return state


def _load(path: Path) -> Any:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as error:  # SafetensorError, OSError: a damaged file either way
            raise WeightsError(
                f"{path} is not a readable safetensors file ({error}); it is truncated or "
                "damaged: download it again"
            ) from error
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        # torch words both cases "Weights only load failed"; only a disallowed global means the
        # file is intact but holds Python objects (random bytes fail on an unknown opcode).
        if "unsupported global" in str(error).lower():
            raise WeightsError(
                f"{path} contains pickled Python objects besides tensors, which wsss_pl refuses "
                "to load (weights_only=True: unpickling could run arbitrary code). If you trust "
                "the file, re-save just its tensors once, e.g. torch.save(torch.load(path, "
                "weights_only=False)['state_dict'], new_path), and pass new_path"
            ) from error
        raise WeightsError(_corrupt(path, error)) from error
    except Exception as error:  # torch raises RuntimeError/KeyError/EOFError... for bad files
        raise WeightsError(_corrupt(path, error)) from error


def _corrupt(path: Path, error: BaseException) -> str:
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if first_line.startswith("Weights only load failed"):  # torch's advice there does not apply
        first_line = "not a valid checkpoint archive or pickle"
    return (
        f"{path} cannot be read as a PyTorch checkpoint ({first_line}); it is probably truncated "
        "or damaged (an interrupted download or copy): delete it and download or copy it again"
    )


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and any(isinstance(v, torch.Tensor) for v in obj.values())


def _unwrap(obj: Any, path: Path) -> Mapping[str, Any]:
    for _ in range(4):  # nested containers, e.g. {"model": {"state_dict": ...}}
        if (
            isinstance(obj, Mapping)
            and obj
            and all(isinstance(v, torch.Tensor) for v in obj.values())
        ):
            return obj
        inner = next(
            (
                obj[k]
                for k in _CONTAINER_KEYS
                if isinstance(obj, Mapping) and isinstance(obj.get(k), Mapping)
            ),
            None,
        )
        if inner is None:
            break
        obj = inner
    if _is_state_dict(obj):
        return obj
    raise WeightsError(
        f"{path} does not look like a state dict (keys: {_describe_keys(obj)}); "
        "pass key= naming the entry that holds it"
    )


def _select(obj: Any, key: str, path: Path) -> Mapping[str, Any]:
    if isinstance(obj, Mapping) and key in obj:
        selected = obj[key]
    else:
        selected = obj
        for part in key.split("."):
            if not isinstance(selected, Mapping) or part not in selected:
                raise WeightsError(
                    f"{path} has no entry {key!r}; its keys are {_describe_keys(obj)}"
                )
            selected = selected[part]
    if not isinstance(selected, Mapping):
        raise WeightsError(
            f"entry {key!r} of {path} is a {type(selected).__name__}, not a state dict"
        )
    return selected


def _describe_keys(obj: Any) -> str:
    if not isinstance(obj, Mapping):
        return f"(a {type(obj).__name__}, not a dict)"
    keys = [str(k) for k in obj]
    return ", ".join(keys[:10]) + (f", ... ({len(keys)} in all)" if len(keys) > 10 else "")


def _strip_module(name: str) -> str:
    while name.startswith("module."):
        name = name[len("module.") :]
    return name


_CKPT_KEYWORDS = ("best", "last", "hpc", "registry")  # Lightning's names for checkpoints it finds


def load_training_checkpoint(path: str | Path) -> Mapping[str, Any] | None:
    """Read a ``--ckpt_path`` without unpickling code (tensors memory-mapped, not read) and check
    that it is a Lightning checkpoint; a one-line WeightsError naming the file otherwise.

    Returns None for Lightning's own names (``best``, ``last``...) and URLs, left to Lightning.
    """
    text = str(path)
    if text in _CKPT_KEYWORDS or text.startswith(_CKPT_KEYWORDS[3] + ":") or "://" in text:
        return None
    path = Path(text).expanduser()
    if not path.is_file():
        raise WeightsError(f"checkpoint {path} (--ckpt_path) does not exist; check the path")
    try:
        checkpoint = torch.load(
            path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path)
        )
    except pickle.UnpicklingError as error:
        if "unsupported global" in str(error).lower():
            raise WeightsError(
                f"checkpoint {path} (--ckpt_path) holds pickled Python objects besides tensors; "
                "wsss_pl refuses to unpickle them (that could run arbitrary code): pass a "
                "checkpoint written by wsss_pl fit"
            ) from None
        raise WeightsError(_not_a_checkpoint(path)) from None
    except Exception:  # truncated zip, not a pickle at all...
        raise WeightsError(_not_a_checkpoint(path)) from None
    state = checkpoint.get("state_dict") if isinstance(checkpoint, Mapping) else None
    if not isinstance(state, Mapping):
        raise WeightsError(
            f"{path} (--ckpt_path) is not a checkpoint of wsss_pl fit (no 'state_dict'; its keys: "
            f"{_describe_keys(checkpoint)}); for pretrained backbone weights set "
            "model.net.init_args.pretrained instead"
        )
    return checkpoint


def _not_a_checkpoint(path: Path) -> str:
    return (
        f"{path} (--ckpt_path) cannot be read as a PyTorch checkpoint: it was not written by "
        "torch.save, or it is truncated; pass a checkpoint written by wsss_pl fit (*.ckpt)"
    )


def check_training_checkpoint(path: str | Path, model: torch.nn.Module) -> None:
    """``load_training_checkpoint`` plus: its tensors have the keys and shapes of ``model`` (the
    configured architecture); a one-line WeightsError naming the file and the mismatch."""
    checkpoint = load_training_checkpoint(path)
    if checkpoint is None:
        return
    state = checkpoint["state_dict"]
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    reshaped = [
        f"{k}: checkpoint {list(state[k].shape)} vs model {list(expected[k].shape)}"
        for k in expected
        if k in state
        and isinstance(state[k], torch.Tensor)
        and tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    problems = [
        f"{len(found)} {what} (e.g. {found[0]})"
        for what, found in (
            ("keys missing", missing),
            ("unexpected keys", unexpected),
            ("tensors of another shape", reshaped),
        )
        if found
    ]
    if problems:
        raise WeightsError(
            f"checkpoint {path} (--ckpt_path) was trained with another architecture: "
            + ", ".join(problems)
            + "; use the model settings it was trained with (its run_config.yaml, e.g. "
            "model.net.init_args.backbone and num_classes)"
        )


def unsafe_pickle_error(path: str | Path, error: BaseException) -> WeightsError | None:
    """A WeightsError for a weights file that ``torch.load(weights_only=True)`` refused, or None
    when ``error`` is not such a refusal (for loaders such as transformers' from_pretrained)."""
    if not isinstance(error, pickle.UnpicklingError):
        return None
    if "unsupported global" in str(error).lower():
        return WeightsError(
            f"{path} holds pickled Python objects besides tensors; wsss_pl refuses to unpickle "
            "them (that could run arbitrary code): use the model's model.safetensors, or a "
            "pytorch_model.bin of tensors only"
        )
    return WeightsError(_corrupt(Path(path), error))
