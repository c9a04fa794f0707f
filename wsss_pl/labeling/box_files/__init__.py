"""Box files, one reader per format (COCO JSON, VOC XML, the user JSON box file, YOLO txt), all
giving ``ImageBoxes`` in xyxy float pixels, 0-based, x2/y2 exclusive. The labeller that prompts
SAM with them is ``wsss_pl.labeling.box_prompts``."""

from wsss_pl.labeling.box_files.boxes import (
    ImageBoxes,
    box_pixels,
    check_box,
    check_overlap,
    clip_to_image,
)
from wsss_pl.labeling.box_files.coco import coco_boxes
from wsss_pl.labeling.box_files.json_file import json_boxes
from wsss_pl.labeling.box_files.voc_xml import voc_xml_boxes
from wsss_pl.labeling.box_files.yolo import yolo_boxes

__all__ = [
    "ImageBoxes",
    "box_pixels",
    "check_box",
    "check_overlap",
    "clip_to_image",
    "coco_boxes",
    "json_boxes",
    "voc_xml_boxes",
    "yolo_boxes",
]
