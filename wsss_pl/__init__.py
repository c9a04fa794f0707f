"""wsss_pl: pixel pseudo-labels from image-level labels (Grounding DINO + SAM) and DeepLab-v2 training."""

from wsss_pl.numerics_env import pin_numerics_env

__version__ = "0.1.0"

# Before anything imports torch (MKL reads MKL_CBWR once, when it loads).
MKL_CBWR_PINNED = pin_numerics_env()
