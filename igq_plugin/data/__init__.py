"""Datasets for IGQ-ViT experiments (no torch / mmdet dependency)."""
from .synthetic_coco import (CLASSES, available_backgrounds, dataset_is_current,
                             generate_dataset, generate_image, generate_split,
                             parse_image_size)

__all__ = [
    "CLASSES",
    "available_backgrounds",
    "dataset_is_current",
    "generate_dataset",
    "generate_image",
    "generate_split",
    "parse_image_size",
]
