"""The demo tasks: which models, data and metrics ``tools/demo.py --task`` runs.

- ``det``: the two demo Swin detectors (Mask R-CNN, Cascade Mask R-CNN) on the
  synthetic COCO-format shapes; COCO bbox / segm mAP (mmdet's ``CocoMetric``).
- ``seg``: the two demo UperNet segmentors (Swin, ViT) on the synthetic semantic
  shapes; mIoU and aAcc (mmseg's ``IoUMetric``).
"""
from __future__ import annotations

import json
import os.path as osp
from dataclasses import dataclass
from typing import Callable, Mapping


@dataclass(frozen=True)
class DemoModel:
    """A demo model: its float config, the quantized config and the float weights."""

    float_config: str
    quant_config: str
    checkpoint: str


@dataclass(frozen=True)
class DemoTask:
    """What a demo task evaluates.

    Attributes:
        name: ``det`` or ``seg``.
        models: demo models by name (the first is the default).
        metrics: result column -> key of the runner's test metrics.
        metric_range: ``(low, high)`` the metrics live in (for checks and plots).
        default_data: the generated dataset's root.
        dataset_args: arguments of the generator for ``default_data``.
        generate, is_current: the generator and its freshness check.
        val_marker: a path under the data root that a dataset of this task must have.
        data_options: ``--cfg-options``-style entries pointing a config at a root.
        split_options: the same, and the test loader at another split of the root
            (e.g. ``train``, to measure on images the val metrics never see).
        count_val: number of val images under a root.
    """

    name: str
    models: Mapping[str, DemoModel]
    metrics: Mapping[str, str]
    metric_range: tuple[float, float]
    default_data: str
    dataset_args: Mapping
    generate: Callable
    is_current: Callable
    val_marker: str
    data_options: Callable[[str], dict]
    split_options: Callable[[str, str], dict]
    count_val: Callable[[str], int]

    @property
    def columns(self) -> list[str]:
        return ['method', 'w_bits', 'a_bits', 'g_avg', *self.metrics, 'kl', 'feat_err', 'gbops',
                'calib_seconds', 'eval_seconds']


def _coco_options(root: str) -> dict:
    return {'test_dataloader.dataset.data_root': root,
            'test_evaluator.ann_file': root + 'annotations/instances_val.json'}


def _coco_split_options(root: str, split: str) -> dict:
    return {'test_dataloader.dataset.data_root': root,
            'test_dataloader.dataset.ann_file': f'annotations/instances_{split}.json',
            'test_dataloader.dataset.data_prefix.img': f'{split}/',
            'test_evaluator.ann_file': root + f'annotations/instances_{split}.json'}


def _coco_val_images(root: str) -> int:
    with open(osp.join(root, 'annotations', 'instances_val.json')) as f:
        return len(json.load(f)['images'])


def _seg_options(root: str) -> dict:
    return {'test_dataloader.dataset.data_root': root}


def _seg_split_options(root: str, split: str) -> dict:
    return {'test_dataloader.dataset.data_root': root,
            'test_dataloader.dataset.data_prefix.img_path': f'img_dir/{split}',
            'test_dataloader.dataset.data_prefix.seg_map_path': f'ann_dir/{split}'}


def _seg_val_images(root: str) -> int:
    import os
    return len(os.listdir(osp.join(root, 'ann_dir', 'val')))


def _coco_generator():
    from . import synthetic_coco
    return synthetic_coco


def _seg_generator():
    from . import synthetic_seg
    return synthetic_seg


DET = DemoTask(
    name='det',
    models={
        'mask-rcnn': DemoModel(
            'configs/demo/mask-rcnn_swin-demo-p4-w7_fpn_synthetic-coco.py',
            'configs/demo/igq-w4a4_mask-rcnn_swin-demo-p4-w7_fpn_synthetic-coco.py',
            'demo_models/mask-rcnn_swin-demo.pth'),
        'cascade': DemoModel(
            'configs/demo/cascade-mask-rcnn_swin-demo-p4-w7_fpn_synthetic-coco.py',
            'configs/demo/igq-w4a4_cascade-mask-rcnn_swin-demo-p4-w7_fpn_synthetic-coco.py',
            'demo_models/cascade-mask-rcnn_swin-demo.pth'),
    },
    metrics={'bbox_mAP': 'coco/bbox_mAP', 'segm_mAP': 'coco/segm_mAP'},
    metric_range=(0.0, 1.0),
    default_data='data/synthetic_coco',
    dataset_args=dict(seed=0, num_train=400, num_val=100, image_size=(192, 192)),
    generate=lambda out, **args: _coco_generator().generate_dataset(out, **args),
    is_current=lambda out, **args: _coco_generator().dataset_is_current(out, **args),
    val_marker='annotations/instances_val.json',
    data_options=_coco_options,
    split_options=_coco_split_options,
    count_val=_coco_val_images)

SEG = DemoTask(
    name='seg',
    models={
        'upernet-swin': DemoModel(
            'configs/demo_seg/upernet_swin-demo-p4-w4_synthetic-seg-128x128.py',
            'configs/demo_seg/igq-w4a4_upernet_swin-demo-p4-w4_synthetic-seg-128x128.py',
            'demo_models/upernet_swin-demo.pth'),
        'upernet-vit': DemoModel(
            'configs/demo_seg/upernet_vit-demo-p8-d128-l6_synthetic-seg-128x128.py',
            'configs/demo_seg/igq-w4a4_upernet_vit-demo-p8-d128-l6_synthetic-seg-128x128.py',
            'demo_models/upernet_vit-demo.pth'),
    },
    metrics={'mIoU': 'mIoU', 'aAcc': 'aAcc'},
    metric_range=(0.0, 100.0),
    default_data='data/synthetic_seg',
    dataset_args=dict(seed=0, num_train=400, num_val=100, image_size=(128, 128)),
    generate=lambda out, **args: _seg_generator().generate_dataset(out, **args),
    is_current=lambda out, **args: _seg_generator().dataset_is_current(out, **args),
    val_marker='ann_dir/val',
    data_options=_seg_options,
    split_options=_seg_split_options,
    count_val=_seg_val_images)

TASKS = {task.name: task for task in (DET, SEG)}


def task_of(model: str) -> DemoTask:
    """The task whose demo models include ``model``."""
    for task in TASKS.values():
        if model in task.models:
            return task
    raise ValueError(f'model={model!r}: allowed are '
                     f'{sorted(m for t in TASKS.values() for m in t.models)}')
