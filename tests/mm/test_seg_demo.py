"""The segmentation demo end to end on a tiny generated dataset (slow)."""
import json
import os.path as osp

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import MODELS, init_default_scope

from igq_demo.synthetic_seg import generate_dataset
from igq_demo.tasks import SEG

from .test_demo import REPO, load_tool

pytestmark = pytest.mark.slow


def test_segmentation_demo_writes_records_and_plots(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    data = str(tmp_path / 'seg_data')
    generate_dataset(data, seed=3, num_train=2, num_val=3, image_size=(128, 128))
    init_default_scope('mmseg')
    torch.manual_seed(0)
    model = MODELS.build(Config.fromfile(SEG.models['upernet-swin'].float_config).model)
    checkpoint = str(tmp_path / 'seg_float.pth')
    torch.save(dict(state_dict=model.state_dict()), checkpoint)
    demo = load_tool('demo')
    out = str(tmp_path / 'out')
    assert demo.main(['--task', 'seg', '--model', 'upernet-swin', '--data', data,
                      '--checkpoint', checkpoint, '--out', out, '--methods', 'per-tensor',
                      'repq', 'igq', '--bits', '4', '--fidelity-images', '2',
                      '--calib-images', '1', '--draws', '2']) == 0
    folder = osp.join(out, 'seg', 'upernet-swin')
    records = json.load(open(osp.join(folder, 'results.json')))['summary']
    assert [r['method'] for r in records] == ['float', 'per-tensor', 'repq', 'igq']
    for record in records:
        assert set(SEG.columns) | {'draws', 'mIoU_std'} <= set(record)
        assert 0 <= record['mIoU'] <= 100 and 0 <= record['aAcc'] <= 100
        if record['method'] != 'float':  # per-pixel KL and neck error on val images 0..1
            assert record['kl'] >= 0 and 0 < record['feat_err'] < 10
    for name in ('results.md', 'miou_by_method.png', 'groups_per_layer.png',
                 'channel_range_variation.png', 'channel_ranges.json'):
        assert osp.getsize(osp.join(folder, name)) > 0
