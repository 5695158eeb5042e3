"""The demo pipeline end to end on a tiny generated dataset (slow)."""
import json
import os.path as osp

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import MODELS, init_default_scope

from igq_demo.synthetic_coco import generate_dataset
from igq_demo.tasks import DET

pytestmark = pytest.mark.slow
REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


def test_demo_writes_complete_records_and_plots(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    data = str(tmp_path / 'data')
    generate_dataset(data, seed=2, num_train=3, num_val=3, image_size=(96, 96))
    init_default_scope('mmdet')
    torch.manual_seed(0)
    model = MODELS.build(Config.fromfile(DET.models['mask-rcnn'].float_config).model)
    checkpoint = str(tmp_path / 'float.pth')
    torch.save(dict(state_dict=model.state_dict()), checkpoint)
    import importlib.util
    spec = importlib.util.spec_from_file_location('demo_cli', osp.join(REPO, 'tools', 'demo.py'))
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    out = str(tmp_path / 'out')
    assert demo.main(['--data', data, '--checkpoint', checkpoint, '--out', out,
                      '--methods', 'per-tensor', 'igq-fixed', '--bits', '4',
                      '--fidelity-images', '2', '--calib-images', '2', '--draws', '2']) == 0
    results = json.load(open(osp.join(out, 'results.json')))
    records = results['summary']
    assert [r['method'] for r in records] == ['float', 'per-tensor', 'igq-fixed']
    assert [(r['method'], r['draw'], r['calib_images']) for r in results['runs']] == [
        ('float', None, None), ('per-tensor', 0, 2), ('per-tensor', 1, 2), ('igq-fixed', 0, 2),
        ('igq-fixed', 1, 2)]
    assert results['settings']['draws'] == 2 and results['settings']['split'] == 'val'
    for record in records:
        assert set(DET.columns) | {'draws'} <= set(record)
        assert record['draws'] == (1 if record['method'] == 'float' else 2)
        for metric in ('bbox_mAP', 'segm_mAP'):
            assert isinstance(record[metric], float) and (0 <= record[metric] <= 1
                                                          or record[metric] == -1)
        assert record['gbops'] > 0 and record['eval_seconds'] > 0
        if record['method'] == 'float':
            assert record['kl'] is None and record['feat_err'] is None
        else:  # measured on val images 0..1, against the model's own float outputs
            assert record['kl'] >= 0 and 0 < record['feat_err'] < 10
    for name in ('results.md', 'ap_by_method.png', 'channel_range_variation.png'):
        assert osp.getsize(osp.join(out, name)) > 0
    # the full-detector protocol: quantized runs with RPN and RoI heads, the float run as is
    assert demo.main(['--data', data, '--checkpoint', checkpoint, '--out', out,
                      '--methods', 'igq-fixed', '--bits', '4', '--fidelity-images', '2',
                      '--protocol', 'full', '--calib-images', '1', '--draws', '1']) == 0
    full = json.load(open(osp.join(out, 'full', 'results.json')))['summary']
    assert [r['method'] for r in full] == ['float', 'igq-fixed']
    assert full[0]['bbox_mAP'] == records[0]['bbox_mAP']  # the same float model
    assert full[1]['gbops'] > records[2]['gbops']  # the heads' operations are quantized too
    assert 'RPN and RoI heads' in open(osp.join(out, 'full', 'results.md')).readline()
    ranges = json.load(open(osp.join(out, 'channel_ranges.json')))
    assert set(ranges) == {'variation', 'spread'} and ranges['variation']
    assert set(ranges['spread']) == set(ranges['variation'])
    assert all(v >= 1 for v in ranges['spread'].values())  # largest over median range
    assert all(v >= 0 for v in ranges['variation'].values())
    # per-layer errors on held-out images of the train split (tools/quant_errors.py)
    errors = load_tool('quant_errors')
    assert errors.main(['--data', data, '--checkpoint', checkpoint, '--out', out,
                        '--methods', 'per-tensor', 'igq-fixed', '--bounds', 'envelope', 'mean',
                        '--eval-images', '2']) == 0
    rows = json.load(open(osp.join(out, 'quant_errors.json')))
    assert [(r['method'], r['bounds']) for r in rows] == [
        ('per-tensor', '-'), ('igq-fixed', 'envelope'), ('igq-fixed', 'mean')]
    for row in rows:
        assert 0 < row['neck'] < 10 and row['kinds'] and all(
            0 <= v < 10 for v in row['layers'].values())
    assert 'attn.w_msa.qkv.output.k' in rows[0]['kinds']


def load_tool(name):
    import importlib.util
    spec = importlib.util.spec_from_file_location(f'{name}_cli',
                                                  osp.join(REPO, 'tools', f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_demo_bad_input(tmp_path):
    import importlib.util
    spec = importlib.util.spec_from_file_location('demo_cli', osp.join(REPO, 'tools', 'demo.py'))
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    assert demo.main(['--methods', 'kmeans']) == 2
    assert demo.main(['--checkpoint', str(tmp_path / 'missing.pth')]) == 2
    (tmp_path / 'empty').mkdir()
    with pytest.raises(FileNotFoundError, match='not a det dataset'):
        from igq_demo.demo import DemoSettings, prepare_data
        prepare_data(DemoSettings(data=str(tmp_path / 'empty')))

