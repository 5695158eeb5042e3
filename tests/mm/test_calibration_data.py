"""Which images calibrate: draws, the paper's pixel count, train images with the test
pipeline (igq_plugin.mm.calibration_data) and the hook's arguments."""
import types

import pytest
import torch

from igq_plugin.mm import IGQCalibrationHook
from igq_plugin.mm.calibration_data import (PAPER_CALIBRATION_PIXELS, draw_calibration_batches,
                                            draw_order, images_for_pixels,
                                            train_images_dataloader)


def test_draws_are_seeded_independent_permutations():
    first, again, other = draw_order(300, 0), draw_order(300, 0), draw_order(300, 1)
    assert first == again and sorted(first) == list(range(300))
    assert first[:27] != other[:27]
    assert len(set(first[:27]) & set(other[:27])) < 10  # ~27 * 27 / 300 expected by chance


def test_paper_pixel_count():
    assert PAPER_CALIBRATION_PIXELS == 800 * 1216
    assert images_for_pixels(800, 1216) == 1
    assert images_for_pixels(800, 1344) == 1  # a larger image: still one
    assert images_for_pixels(192, 192) == 27  # 26.4 -> 27 demo detection images
    assert images_for_pixels(128, 128) == 60  # demo segmentation images


class FakeDataset:
    """Image i is a constant [3, h, w] tensor of value i (so a batch names its index)."""

    def __init__(self, size, height=192, width=192):
        self.size, self.height, self.width = size, height, width

    def __len__(self):
        return self.size

    def __getitem__(self, index):
        return torch.full((3, self.height, self.width), float(index))


class FakeModel:
    @staticmethod
    def data_preprocessor(images, training):
        assert training is False
        return dict(inputs=torch.stack(images), data_samples=None)


def fake_loader(dataset):
    return types.SimpleNamespace(dataset=dataset, collate_fn=list)


def indices(batches):
    return [int(b['inputs'][0, 0, 0, 0]) for b in batches]


def test_batches_follow_the_draw_and_a_larger_count_extends_it():
    loader = fake_loader(FakeDataset(300))
    four = indices(draw_calibration_batches(loader, 4, FakeModel, draw=2))
    eight = indices(draw_calibration_batches(loader, 8, FakeModel, draw=2))
    assert four == draw_order(300, 2)[:4] and eight[:4] == four
    assert all(b['inputs'].shape == (1, 3, 192, 192)
               for b in draw_calibration_batches(loader, 2, FakeModel))


def test_default_count_is_the_paper_pixel_count_of_the_preprocessed_size():
    assert len(draw_calibration_batches(fake_loader(FakeDataset(300)), None, FakeModel)) == 27
    big = fake_loader(FakeDataset(3, 800, 1216))
    assert len(draw_calibration_batches(big, None, FakeModel)) == 1


def test_bad_counts_and_draws_are_named():
    loader = fake_loader(FakeDataset(10))
    with pytest.raises(ValueError, match=r'num_images=27 .*paper pixel count.* only 10'):
        draw_calibration_batches(loader, None, FakeModel)
    with pytest.raises(ValueError, match='num_images=11 .* only 10'):
        draw_calibration_batches(loader, 11, FakeModel)
    with pytest.raises(ValueError, match='num_images=0'):
        draw_calibration_batches(loader, 0, FakeModel)
    with pytest.raises(ValueError, match='draw=-1'):
        draw_calibration_batches(loader, 1, FakeModel, draw=-1)
    with pytest.raises(ValueError, match='empty'):
        draw_calibration_batches(fake_loader(FakeDataset(0)), 1, FakeModel)


def test_train_images_are_read_with_the_evaluation_pipeline():
    train = dict(batch_size=2, sampler=dict(type='DefaultSampler', shuffle=True),
                 dataset=dict(type='CocoDataset', ann_file='train.json',
                              pipeline=[dict(type='RandomFlip', prob=0.5)]))
    test = dict(batch_size=1, sampler=dict(type='DefaultSampler', shuffle=False),
                dataset=dict(type='CocoDataset', ann_file='val.json', test_mode=True,
                             pipeline=[dict(type='Resize', scale=(192, 192))]))
    loader = train_images_dataloader(train, test)
    assert loader['dataset']['ann_file'] == 'train.json'
    assert loader['dataset']['pipeline'] == [dict(type='Resize', scale=(192, 192))]
    assert loader['sampler'] == test['sampler'] and loader['batch_size'] == 1
    assert train['dataset']['pipeline'] == [dict(type='RandomFlip', prob=0.5)]  # not changed
    wrapped = dict(train, dataset=dict(type='RepeatDataset', times=2, dataset=train['dataset']))
    with pytest.raises(ValueError, match=r"'RepeatDataset'\) has no pipeline"):
        train_images_dataloader(wrapped, test)


def test_hook_arguments_are_checked():
    with pytest.raises(ValueError, match='IGQCalibrationHook: draw=-1'):
        IGQCalibrationHook(draw=-1)
    with pytest.raises(ValueError, match='IGQCalibrationHook: num_images=0'):
        IGQCalibrationHook(num_images=0)
    with pytest.raises(ValueError, match="dataloader=None; allowed are .*'train'"):
        IGQCalibrationHook(dataloader=None)
    hook = IGQCalibrationHook()
    assert (hook.num_images, hook.dataloader, hook.draw) == (None, 'train', 0)


def test_a_config_without_train_dataloader_is_refused_by_name():
    from mmengine.config import Config
    runner = types.SimpleNamespace(cfg=Config(dict(test_dataloader=dict(dataset=dict()))))
    with pytest.raises(ValueError, match="dataloader='train' but the config has no "
                                         "train_dataloader"):
        IGQCalibrationHook()._dataloader(runner, 'test')
