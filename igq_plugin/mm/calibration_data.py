"""Which images calibrate a model: the source dataset, the draw and the count.

- Source: by default the **train** split, read with the evaluation pipeline (resize,
  no random flip or crop), so that a model is never calibrated on the images it is
  evaluated on and the calibration batches are deterministic.
- Draw: the images are the first ``num_images`` of a permutation of the dataset seeded
  with ``draw``. Draws 0, 1, 2, ... are independent calibration sets; for a fixed draw a
  larger count extends the same sample.
- Count: ``num_images=None`` takes enough images for the paper's calibration size: one
  COCO image at ~800x1216, about 60k stage-1 tokens of a patch-4 Swin. On full-size
  COCO inputs that is 1 image (the paper's protocol); on a 192x192 demo image (2.3k
  tokens) it is 27. docs/results.md, "Calibration protocol", has the held-out study.
"""
from __future__ import annotations

import copy
import math
import types
from functools import partial

import numpy as np
import torch
from mmengine.registry import DATASETS, FUNCTIONS
from torch import nn

# One COCO image at the paper's test scale (short side 800, long side ~1216): the
# number of input pixels the default calibration set adds up to.
PAPER_CALIBRATION_PIXELS = 800 * 1216

SOURCES = ('train', 'test', 'val')


def check_draw(draw) -> int:
    """``draw`` as an integer >= 0, or a ValueError naming it."""
    if isinstance(draw, bool) or not isinstance(draw, int) or draw < 0:
        raise ValueError(f'draw={draw!r}: the calibration draw must be an integer >= 0 (the '
                         f'seed of the image sample)')
    return draw


def check_num_images(num_images) -> int | None:
    """``num_images`` as ``None`` (the paper's pixel count) or an integer >= 1."""
    if num_images is None:
        return None
    if isinstance(num_images, bool) or not isinstance(num_images, int) or num_images < 1:
        raise ValueError(f'num_images={num_images!r}: calibration needs at least 1 image '
                         f'(or None: as many as the paper\'s one 800x1216 COCO image holds '
                         f'pixels)')
    return num_images


def draw_order(dataset_size: int, draw: int) -> list[int]:
    """The dataset indices in the order draw ``draw`` takes them (a seeded permutation)."""
    check_draw(draw)
    if dataset_size < 1:
        raise ValueError('the calibration dataset is empty: need at least 1 image')
    return np.random.default_rng(draw).permutation(dataset_size).tolist()


def images_for_pixels(height: int, width: int, pixels: int = PAPER_CALIBRATION_PIXELS) -> int:
    """How many ``height x width`` images hold ``pixels`` input pixels (at least 1)."""
    return max(1, math.ceil(pixels / (height * width)))


def train_images_dataloader(train_loader_cfg: dict, eval_loader_cfg: dict) -> dict:
    """A dataloader config reading the train dataset with the evaluation pipeline.

    Args:
        train_loader_cfg: the config's ``train_dataloader``.
        eval_loader_cfg: the dataloader of the loop about to evaluate (its batch
            settings and its ``dataset.pipeline`` are used).

    Raises:
        ValueError: the train dataset is a wrapper without its own ``pipeline`` (e.g.
            ``RepeatDataset``, ``MultiImageMixDataset``).
    """
    dataset = copy.deepcopy(dict(train_loader_cfg['dataset']))
    eval_dataset = eval_loader_cfg['dataset']
    if 'pipeline' not in dataset or 'pipeline' not in eval_dataset:
        raise ValueError(f"calibration on train images: train_dataloader.dataset (type "
                         f"{dataset.get('type')!r}) has no pipeline to replace by the "
                         f"evaluation pipeline; pass IGQCalibrationHook(dataloader=dict(...)) "
                         f"with a dataset of calibration images")
    dataset['pipeline'] = copy.deepcopy(eval_dataset['pipeline'])
    loader = copy.deepcopy(dict(eval_loader_cfg))
    loader['dataset'] = dataset
    return loader


def build_calibration_source(loader_cfg: dict):
    """The dataset and collate function of a dataloader config, built as MMEngine's
    ``Runner.build_dataloader`` builds them, without a sampler or a loader.

    Why not the runner's builder: its ``DefaultSampler`` without a seed synchronises a
    random seed across ranks, a collective that only the calibrating rank 0 would call.

    Returns:
        An object with ``dataset`` and ``collate_fn`` (what
        :func:`draw_calibration_batches` reads).
    """
    loader_cfg = copy.deepcopy(dict(loader_cfg))
    dataset = DATASETS.build(loader_cfg['dataset'])
    if hasattr(dataset, 'full_init'):
        dataset.full_init()
    collate_cfg = dict(loader_cfg.get('collate_fn', dict(type='pseudo_collate')))
    collate_type = collate_cfg.pop('type')
    collate = FUNCTIONS.get(collate_type) if isinstance(collate_type, str) else collate_type
    return types.SimpleNamespace(dataset=dataset, collate_fn=partial(collate, **collate_cfg))


def draw_calibration_batches(dataloader, num_images: int | None, model: nn.Module,
                             draw: int = 0) -> list[dict]:
    """Preprocessed single-image batches of calibration draw ``draw``.

    Args:
        dataloader: a built dataloader; only its ``dataset`` and ``collate_fn`` are used
            (independent of the sampler: every world size calibrates on the same images).
        num_images: images to take, or ``None`` for :data:`PAPER_CALIBRATION_PIXELS`
            worth of the first drawn image's preprocessed size.
        model: the mm model (its ``data_preprocessor`` makes the batches).
        draw: the seed of the sample (:func:`draw_order`).

    Returns:
        ``num_images`` dicts with ``inputs [1, 3, H, W]`` and ``data_samples``.

    Raises:
        ValueError: a bad ``num_images`` or ``draw``, or more images than the dataset has.
    """
    check_num_images(num_images)
    dataset = dataloader.dataset
    order = draw_order(len(dataset), draw)

    def batch(index: int) -> dict:
        return model.data_preprocessor(dataloader.collate_fn([dataset[index]]), False)

    with torch.no_grad():
        batches = [batch(order[0])]
        count = num_images
        if count is None:
            height, width = batches[0]['inputs'].shape[-2:]
            count = images_for_pixels(int(height), int(width))
        if count > len(dataset):
            raise ValueError(f'num_images={count} calibration images requested'
                             f'{" (the paper pixel count)" if num_images is None else ""} but '
                             f'the calibration dataset has only {len(dataset)} images')
        batches += [batch(i) for i in order[1:count]]
    return batches
