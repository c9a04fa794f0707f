"""Class vocabularies: names, prompt phrases, assist words, palettes.

Label convention everywhere in wsss_pl: uint8 maps, 0 = background, 1..C = ``class_names[0..C-1]``,
255 = ignore. A multi-hot image-level label vector has C entries (no background).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from wsss_pl.errors import UnknownClassError
from wsss_pl.palette import voc_palette  # noqa: F401  (re-exported: callers import it here)

IGNORE_INDEX = 255

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)  # fmt: skip

# Raw VOC names that WordPiece splits into meaningless pieces get a readable prompt phrase.
VOC_PROMPT_NAMES: dict[str, str] = {
    "aeroplane": "aeroplane",
    "diningtable": "dining table",
    "motorbike": "motorbike",
    "pottedplant": "potted plant",
    "tvmonitor": "tv monitor",
}

# Assist words of "An Alternative to WSSS?" (Sun et al. 2023); a hit on one means its parent class.
VOC_ASSIST_WORDS: dict[str, tuple[str, ...]] = {
    "horse": ("halter", "saddle"),
    "diningtable": ("bowl", "plate", "food", "fruit", "glass", "dishes"),
    "tvmonitor": ("tv", "monitor"),
}

COCO_CLASSES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
)  # fmt: skip

# COCO category ids of COCO_CLASSES (the 80 used ids out of 1..90), in the same order.
COCO_CATEGORY_IDS: tuple[int, ...] = (
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28,
    31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55,
    56, 57, 58, 59, 60, 61, 62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84,
    85, 86, 87, 88, 89, 90,
)  # fmt: skip


@dataclass(frozen=True)
class ClassVocabulary:
    """The foreground classes of a dataset and how to prompt a detector for them.

    Args:
        name: short dataset name used in cache paths and logs, e.g. ``"voc"``.
        class_names: foreground class names; ``class_names[i]`` has label id ``i + 1``.
        prompt_names: phrase used in the detector caption for a class (default: the class name).
        assist_words: extra phrases per class; a detection on one counts as its parent class.
        category_ids: dataset-specific ids (COCO category ids) of ``class_names``, same order.
        caption_separator: what joins the phrases of a ``paper``-style caption, as the released
            code wrote them: ``"."`` for VOC (process_pascal.py), ``" . "`` for COCO
            (process_coco.py).
    """

    name: str
    class_names: tuple[str, ...]
    prompt_names: Mapping[str, str] = field(default_factory=dict)
    assist_words: Mapping[str, Sequence[str]] = field(default_factory=dict)
    category_ids: tuple[int, ...] | None = None
    caption_separator: str = " . "

    def __post_init__(self) -> None:
        if not self.class_names:
            raise ValueError(f"vocabulary {self.name!r} has no classes")
        if len(set(self.class_names)) != len(self.class_names):
            raise ValueError(f"vocabulary {self.name!r} repeats a class name")
        if len(self.class_names) > 254:
            raise ValueError(f"vocabulary {self.name!r}: at most 254 classes fit a uint8 label map")
        for key in (*self.prompt_names, *self.assist_words):
            if key not in self.class_names:
                raise UnknownClassError(
                    f"vocabulary {self.name!r}: prompt name / assist words given for unknown class "
                    f"{key!r}; known classes: {', '.join(self.class_names)}"
                )
        if self.category_ids is not None and len(self.category_ids) != len(self.class_names):
            raise ValueError(f"vocabulary {self.name!r}: one category id per class is needed")

    @property
    def num_classes(self) -> int:
        """Number of label ids including background (C + 1)."""
        return len(self.class_names) + 1

    def label_id(self, class_name: str) -> int:
        """Label id (1..C) of a class name; raises UnknownClassError naming the valid names."""
        try:
            return self.class_names.index(class_name) + 1
        except ValueError:
            raise UnknownClassError(
                f"unknown class name {class_name!r} for vocabulary {self.name!r}; "
                f"valid names: {', '.join(self.class_names)}"
            ) from None

    def prompt_name(self, class_name: str) -> str:
        return self.prompt_names.get(class_name, class_name)

    def multi_hot(self, class_names: Iterable[str]) -> torch.Tensor:
        """Float tensor [C] with 1 at every named class."""
        vector = torch.zeros(len(self.class_names), dtype=torch.float32)
        for class_name in class_names:
            vector[self.label_id(class_name) - 1] = 1.0
        return vector

    def names_of(self, multi_hot: torch.Tensor) -> list[str]:
        """Class names present in a multi-hot vector [C], in vocabulary order."""
        return [self.class_names[i] for i in torch.nonzero(multi_hot > 0).flatten().tolist()]

    def palette(self) -> list[int]:
        return voc_palette()


VOC = ClassVocabulary(
    name="voc",
    class_names=VOC_CLASSES,
    prompt_names=VOC_PROMPT_NAMES,
    assist_words=VOC_ASSIST_WORDS,
    caption_separator=".",
)

COCO = ClassVocabulary(name="coco", class_names=COCO_CLASSES, category_ids=COCO_CATEGORY_IDS)

VOCABULARIES: dict[str, ClassVocabulary] = {"voc": VOC, "coco": COCO}
