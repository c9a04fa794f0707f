"""wsss_pl: pixel pseudo-labels from image-level labels (Grounding DINO + SAM) and DeepLab-v2 training."""

__version__ = "0.1.0"
