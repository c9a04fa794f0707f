"""Dense CRF post-processing (Krähenbühl & Koltun 2011) with DeepLab-v2's published parameters.

Runs on the CPU through ``pydensecrf2`` (module ``pydensecrf``), one image at a time, on the
class probabilities of the (multi-scale + flip) inference, as DeepLab-v2 and
kazuto1011/deeplab-pytorch's ``DenseCRF`` do.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from jsonargparse.typing import NonNegativeFloat, PositiveFloat, PositiveInt

from wsss_pl.errors import ConfigError, WsssError


@dataclass(frozen=True)
class CRFParams:
    """Dense CRF settings; defaults: DeepLab-v2 ResNet-101 on VOC (deeplab-pytorch voc12.yaml).

    iterations: mean-field steps. pos_weight / pos_xy_std: the Gaussian (smoothness) kernel.
    bi_weight / bi_xy_std / bi_rgb_std: the bilateral (appearance) kernel; the colour kernel is
    isotropic, so RGB or BGR order gives the same result.

    The stds and ``iterations`` must be positive (pydensecrf divides by the stds and crashes the
    process on a 0), the weights >= 0 (0 turns a kernel off): the types make the CLI refuse other
    values while parsing, ``__post_init__`` refuses them in Python.
    """

    iterations: PositiveInt = 10  # type: ignore[assignment]
    pos_weight: NonNegativeFloat = 3.0  # type: ignore[assignment]
    pos_xy_std: PositiveFloat = 1.0  # type: ignore[assignment]
    bi_weight: NonNegativeFloat = 4.0  # type: ignore[assignment]
    bi_xy_std: PositiveFloat = 67.0  # type: ignore[assignment]
    bi_rgb_std: PositiveFloat = 3.0  # type: ignore[assignment]

    def __post_init__(self) -> None:
        for name, value in self.as_dict().items():
            finite = isinstance(value, int | float) and math.isfinite(value)
            whole = name != "iterations" or (isinstance(value, int) and not isinstance(value, bool))
            weight = name.endswith("_weight")
            if not (finite and whole and (value >= 0 if weight else value > 0)):
                kind = (
                    "an integer >= 1"
                    if name == "iterations"
                    else "a number >= 0"
                    if weight
                    else "a number > 0"
                )
                raise ConfigError(f"model.crf.{name} must be {kind}, got {value!r}")
            # plain int/float, not jsonargparse's subclasses: checkpoints load with weights_only
            object.__setattr__(self, name, int(value) if name == "iterations" else float(value))

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def dense_crf(image: np.ndarray, probs: np.ndarray, params: CRFParams = CRFParams()) -> np.ndarray:
    """Refine class probabilities with a fully connected CRF.

    Args:
        image: uint8 [H, W, 3], the original (not normalised) image.
        probs: float [C, H, W] class probabilities (each pixel sums to 1).
        params: kernel settings.

    Returns:
        float32 [C, H, W]: the CRF's marginals after ``params.iterations`` steps.
    """
    try:
        import pydensecrf.densecrf as dcrf
        from pydensecrf.utils import unary_from_softmax
    except ImportError as error:
        raise WsssError(
            "dense CRF needs pydensecrf2: pip install pydensecrf2 (or set model.test_crf: false)"
        ) from error
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be uint8 [H, W, 3], got {image.dtype} {image.shape}")
    classes, height, width = probs.shape
    if image.shape[:2] != (height, width):
        raise ValueError(f"image {image.shape[:2]} and probabilities {probs.shape[1:]} differ")
    crf = dcrf.DenseCRF2D(width, height, classes)
    crf.setUnaryEnergy(
        np.ascontiguousarray(unary_from_softmax(probs.astype(np.float32, copy=True)))
    )
    crf.addPairwiseGaussian(sxy=params.pos_xy_std, compat=params.pos_weight)
    crf.addPairwiseBilateral(
        sxy=params.bi_xy_std,
        srgb=params.bi_rgb_std,
        rgbim=np.require(image, requirements=("C", "W")),  # pydensecrf wants a writable buffer
        compat=params.bi_weight,
    )
    marginals = crf.inference(params.iterations)
    return np.asarray(marginals, dtype=np.float32).reshape(classes, height, width)
