from wsss_pl.models.deeplab_v2 import DeepLabV2

__all__ = ["DeepLabV2"]
