"""HQ-SAM (``segment-anything-hq``, Ke et al. 2023): SAM's encoder and decoder plus a
high-quality output token fed with early ViT features; same checkpoint layout as SAM
(``sam_hq_vit_h.pth``...). Masks are SAM's + the HQ token's logits (the package's default,
``hq_token_only=False``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from torch import Tensor, nn

from wsss_pl.errors import WeightsError
from wsss_pl.labeling.segmenters.base import TINY, TINY_BUILD, ImageResize, SegmenterSpec
from wsss_pl.labeling.segmenters.sam import SamSegmenter


class HQSamSegmenter(SamSegmenter):
    """``SamSegmenter`` for an HQ-SAM model: the encoder also returns early ViT features, which
    the HQ decoder takes per image. Same input resize, prompts and thresholds as SAM."""

    def __init__(
        self, sam: nn.Module, encoder_batch_size: int = 4, image_resize: ImageResize = "tensor"
    ) -> None:
        super().__init__(sam, encoder_batch_size, image_resize)  # type: ignore[arg-type]

    def _encode(self, pixels: Tensor) -> list[dict[str, Any]]:
        """HQ-SAM's encoder also returns early ViT features, which its decoder takes per image."""
        embeddings, interm = self.sam.image_encoder(pixels)
        return [
            {
                "image_embeddings": embeddings[k : k + 1],
                "hq_token_only": False,
                # after the first global block, in the package's layout [1, 1, h, w, C]
                "interm_embeddings": interm[0][k : k + 1][None],
            }
            for k in range(embeddings.shape[0])
        ]


class HQSamSpec(SegmenterSpec):
    """HQ-SAM from ``segment-anything-hq``.

    Args:
        model_type: ``vit_h``, ``vit_l`` or ``vit_b`` (the package's builders).
        checkpoint: path of ``sam_hq_vit_{h,l,b}.pth`` (https://huggingface.co/lkeab/hq-sam), or
            ``tiny`` (random, tests). No registry name: no published checksum was found.
    """

    def __init__(
        self, model_type: Literal["vit_h", "vit_l", "vit_b"] = "vit_h", checkpoint: str = "tiny"
    ) -> None:
        self.model_type = model_type
        self.checkpoint = checkpoint

    def _path(self) -> Path:
        from wsss_pl.labeling.model_folders import check_sam_path

        path = Path(self.checkpoint).expanduser()
        check_sam_path(path, "hq_sam")
        if not path.is_file():
            raise WeightsError(
                f"HQ-SAM checkpoint not found: {path}; download sam_hq_{self.model_type}.pth from "
                "https://huggingface.co/lkeab/hq-sam on a machine with internet and give its path"
            )
        return path

    def settings(self) -> dict[str, Any]:
        if self.checkpoint == TINY:
            return {"type": "hq_sam_tiny", "seed": 0}
        from wsss_pl.weights import checkpoint_fingerprint

        return {"type": f"hq_sam_{self.model_type}", "sha256": checkpoint_fingerprint(self._path())}

    def build(self, encoder_batch_size: int = 4, image_resize: ImageResize = "tensor") -> nn.Module:
        if self.checkpoint == TINY:
            raise ValueError(TINY_BUILD)
        from wsss_pl.labeling.model_folders import check_sam_state
        from wsss_pl.weights import load_state_dict

        path = self._path()
        state = load_state_dict(path)
        check_sam_state(path, state, "hq_sam", self.model_type)  # plain SAM, other size: one line
        from segment_anything_hq import sam_model_registry

        sam = sam_model_registry[self.model_type](checkpoint=None)
        try:
            result = sam.load_state_dict(state, strict=False)  # as the package's builder
        except RuntimeError as error:
            raise WeightsError(
                f"cannot load HQ-SAM {self.model_type} from {self.checkpoint}: {str(error)[:300]}"
            ) from error
        if result.missing_keys:  # e.g. a plain SAM checkpoint: the HQ token would stay random
            raise WeightsError(
                f"{self.checkpoint} is not an HQ-SAM {self.model_type} checkpoint: it lacks "
                f"{len(result.missing_keys)} keys such as {result.missing_keys[:3]}"
            )
        return HQSamSegmenter(sam, encoder_batch_size, image_resize)
