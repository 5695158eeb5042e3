"""Which generated images calibrate, which decide, which report.

The demo datasets have 400 train and 100 val images. Calibration draws come from the
first :data:`CALIBRATION_POOL` train images; the remaining train images are the
**held-out** split on which defaults and method choices are decided; val is only
reported. No image is both calibrated on and evaluated.
"""
from __future__ import annotations

import json
import os
import os.path as osp

from .tasks import DemoTask

CALIBRATION_POOL = 300  # train images 0..299: the calibration draws' pool
SPLITS = ('val', 'holdout')


def calibration_pool_options(root: str) -> dict:
    """``--cfg-options`` pointing the calibration source (the train dataset, read by
    ``IGQCalibrationHook`` with the test pipeline) at the train split of ``root`` and
    restricting it to the pool."""
    return {'train_dataloader.dataset.data_root': root,
            'train_dataloader.dataset.indices': CALIBRATION_POOL}


def split_options(task: DemoTask, root: str, split: str, work_dir: str) -> dict:
    """``--cfg-options`` pointing the test loader and metric at ``split``.

    Args:
        task: the demo task.
        root: the dataset root (ending in ``/``).
        split: ``'val'`` or ``'holdout'`` (train images from :data:`CALIBRATION_POOL` on).
        work_dir: where the held-out split's COCO annotation file is written (mmdet's
            ``CocoMetric`` scores every image of its annotation file, so the split needs
            its own file).
    """
    if split not in SPLITS:
        raise ValueError(f'split={split!r}: allowed are {SPLITS}')
    if split == 'val':
        return task.data_options(root)
    if task.name == 'seg':
        count = task_train_images(task, root)
        return dict(task.split_options(root, 'train'),
                    **{'test_dataloader.dataset.indices': list(range(CALIBRATION_POOL,
                                                                     count))})
    annotations = _coco_holdout_file(root, work_dir)
    return dict(task.split_options(root, 'train'),
                **{'test_dataloader.dataset.ann_file': annotations,
                   'test_evaluator.ann_file': annotations})


def task_train_images(task: DemoTask, root: str) -> int:
    """Number of train images under ``root``."""
    if task.name == 'seg':
        return len(os.listdir(osp.join(root, 'ann_dir', 'train')))
    with open(osp.join(root, 'annotations', 'instances_train.json')) as f:
        return len(json.load(f)['images'])


def _coco_holdout_file(root: str, work_dir: str) -> str:
    """The train annotations of images ``CALIBRATION_POOL..`` (in file order), written to
    ``work_dir``; returns its absolute path."""
    with open(osp.join(root, 'annotations', 'instances_train.json')) as f:
        coco = json.load(f)
    if len(coco['images']) <= CALIBRATION_POOL:
        raise ValueError(f'{root} has {len(coco["images"])} train images: the held-out split '
                         f'needs more than the calibration pool of {CALIBRATION_POOL}')
    images = coco['images'][CALIBRATION_POOL:]
    ids = {image['id'] for image in images}
    subset = dict(coco, images=images,
                  annotations=[a for a in coco['annotations'] if a['image_id'] in ids])
    os.makedirs(work_dir, exist_ok=True)
    path = osp.abspath(osp.join(work_dir, 'instances_train_holdout.json'))
    with open(path, 'w') as f:
        json.dump(subset, f)
    return path
