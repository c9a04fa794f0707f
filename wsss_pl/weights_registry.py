"""The registry data: every known checkpoint file (URL, sha256, licence) and hub model (repo,
revision, files), by the name configs use (``sam_vit_h``, ``grounding_dino_tiny``...).

Data only: downloading and resolving a name live in ``wsss_pl.weights``, safe loading in
``wsss_pl.weights_loading``; ``wsss_pl.weights`` re-exports everything here.
"""

from __future__ import annotations

from dataclasses import dataclass


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
