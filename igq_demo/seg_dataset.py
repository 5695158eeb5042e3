"""mmseg dataset class of the synthetic segmentation shapes (:mod:`igq_demo.synthetic_seg`).

Importing this module (``custom_imports = dict(imports=['igq_demo.seg_dataset'])``)
registers ``SyntheticShapesDataset`` in mmseg's ``DATASETS`` registry: a
``BaseSegDataset`` with the classes and palette of the generator, ``.jpg`` images,
``.png`` label maps and label 0 (background) kept as a class.
"""
from mmseg.datasets import BaseSegDataset
from mmseg.registry import DATASETS

from igq_demo.synthetic_seg import PALETTE, SEG_CLASSES

__all__ = ["SyntheticShapesDataset"]


@DATASETS.register_module()
class SyntheticShapesDataset(BaseSegDataset):
    """``img_dir/{split}/NNNNNN.jpg`` with ``ann_dir/{split}/NNNNNN.png`` labels 0..6."""

    METAINFO = dict(classes=SEG_CLASSES, palette=[list(c) for c in PALETTE])

    def __init__(self, img_suffix: str = ".jpg", seg_map_suffix: str = ".png",
                 reduce_zero_label: bool = False, **kwargs) -> None:
        super().__init__(img_suffix=img_suffix, seg_map_suffix=seg_map_suffix,
                         reduce_zero_label=reduce_zero_label, **kwargs)
