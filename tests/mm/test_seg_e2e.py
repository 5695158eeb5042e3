"""End to end through mmseg's stock tools/test.py (slow: run with ``pytest -m slow``).

A tiny generated segmentation dataset and a randomly initialised tiny UperNet Swin:
the mIoU is near chance, but every step runs for real (conversion, calibration,
per-pixel allocation, IoUMetric of the quantized segmentor, state file, 2 processes).
"""
import os
import os.path as osp
import re
import subprocess
import sys

import mmseg
import numpy as np
import pytest
import torch

pytestmark = pytest.mark.slow

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
TEST_PY = osp.join(osp.dirname(mmseg.__file__), '.mim', 'tools', 'test.py')
QUANT_CONFIG = osp.join(REPO, 'configs/upernet/igq-w4a4_upernet_swin-t-p4-w7_8xb2-160k_ade20k-512x512.py')
CONFIG = '''
_base_ = {quant!r}
size = 64
model = dict(
    data_preprocessor=dict(size=(size, size)),
    backbone=dict(embed_dims=16, depths=[1, 1, 2, 1], num_heads=[1, 2, 2, 4], window_size=4,
                  drop_path_rate=0.0,
                  quant=dict(groups=4, candidates=[1, 2, 4], method={method!r})),
    decode_head=dict(in_channels=[16, 32, 64, 128], channels=32, num_classes=4,
                     norm_cfg=dict(type='BN', requires_grad=True)),
    auxiliary_head=dict(in_channels=64, channels=16, num_classes=4,
                        norm_cfg=dict(type='BN', requires_grad=True)))
test_pipeline = [dict(type='LoadImageFromFile'), dict(type='LoadAnnotations'),
                 dict(type='PackSegInputs')]
test_dataloader = dict(batch_size=1, num_workers=0, persistent_workers=False, dataset=dict(
    _delete_=True, type='BaseSegDataset', data_root={data!r},
    data_prefix=dict(img_path='img', seg_map_path='ann'), img_suffix='.png',
    seg_map_suffix='.png', pipeline=test_pipeline,
    metainfo=dict(classes=('background', 'a', 'b', 'c'),
                  palette=[[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255]])))
test_evaluator = dict(type='IoUMetric', iou_metrics=['mIoU'])
# calibration reads the train dataset with the test pipeline: here the same tiny images
train_dataloader = dict(dataset=dict(
    _delete_=True, type='BaseSegDataset', data_root={data!r},
    data_prefix=dict(img_path='img', seg_map_path='ann'), img_suffix='.png',
    seg_map_suffix='.png', pipeline=[],
    metainfo=dict(classes=('background', 'a', 'b', 'c'),
                  palette=[[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255]])))
custom_hooks = [dict(type='IGQCalibrationHook', num_images=1)]
'''

FLOAT_CONFIG = '''
_base_ = {base!r}
model = dict(backbone=dict(_delete_=True, type='mmseg.SwinTransformer', embed_dims=16,
                           depths=[1, 1, 2, 1], num_heads=[1, 2, 2, 4], window_size=4,
                           drop_path_rate=0.0, init_cfg=None))
custom_hooks = []
'''


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    from PIL import Image
    root = tmp_path_factory.mktemp('seg_e2e')
    data = root / 'data'
    (data / 'img').mkdir(parents=True)
    (data / 'ann').mkdir()
    rng = np.random.default_rng(0)
    for index in range(3):  # a square of class 1..3 on a noisy background, class 0
        label = np.zeros((64, 64), np.uint8)
        top, left = rng.integers(4, 30, size=2)
        label[top:top + 28, left:left + 28] = index + 1
        image = rng.integers(0, 90, size=(64, 64, 3)).astype(np.uint8)
        image[label > 0, index] = 220
        Image.fromarray(image).save(data / 'img' / f'{index}.png')
        Image.fromarray(label).save(data / 'ann' / f'{index}.png')
    configs = {}
    for method in ('igq', 'per-tensor'):
        path = root / f'tiny_{method}.py'
        path.write_text(CONFIG.format(quant=QUANT_CONFIG, data=str(data), method=method))
        configs[method] = str(path)
    configs['float'] = str(root / 'tiny_float.py')  # the same segmentor, not quantized
    (root / 'tiny_float.py').write_text(FLOAT_CONFIG.format(base=configs['igq']))
    from mmengine.config import Config
    from mmengine.registry import MODELS, init_default_scope
    init_default_scope('mmseg')
    torch.manual_seed(0)
    checkpoint = root / 'float.pth'
    model = MODELS.build(Config.fromfile(configs['float']).model)
    torch.save(dict(state_dict=model.state_dict()), checkpoint)
    return root, configs, str(checkpoint)


def run(args, work_dir, processes=1):
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS='1')
    if processes == 1:
        command = [sys.executable, TEST_PY]
    else:
        command = [sys.executable, '-m', 'torch.distributed.run', f'--nproc_per_node={processes}',
                   '--master_port=29619', osp.join(REPO, 'tools', 'dist_test.py')]
    result = subprocess.run(command + args + ['--work-dir', work_dir], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=900)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    return output


def miou(output):
    found = re.findall(r'mIoU: (-?[0-9.]+)', output)
    assert found, output[-3000:]
    return float(found[-1])


def fingerprint(output):
    return re.search(r'quantizer buffers fingerprint (\w+)', output).group(1)


def test_stock_mmseg_test_py_calibrates_allocates_and_evaluates(setup):
    from PIL import Image
    root, configs, checkpoint = setup
    work = str(root / 'single')
    output = run([configs['igq'], checkpoint], work)
    assert 'IGQ calibration: method=igq' in output and 'decode_head' in output
    assert 'IGQ: float checkpoint fits the model' in output
    first = miou(output)
    assert 0.0 <= first <= 100.0

    other = miou(run([configs['per-tensor'], checkpoint], str(root / 'per_tensor')))
    assert 0.0 <= other <= 100.0

    # predictions of the float segmentor and the quantized one differ
    float_out, quant_out = root / 'float_pred', root / 'igq_pred'
    assert 0.0 <= miou(run([configs['float'], checkpoint, '--out', str(float_out)],
                           str(root / 'float'))) <= 100.0
    run([configs['igq'], checkpoint, '--out', str(quant_out)], str(root / 'igq_out'))
    names = sorted(os.listdir(float_out))
    assert names and names == sorted(os.listdir(quant_out))
    assert any(not np.array_equal(np.array(Image.open(float_out / n)),
                                  np.array(Image.open(quant_out / n))) for n in names)

    reloaded = run([configs['igq'], checkpoint, '--cfg-options',
                    f'custom_hooks.0.state_file={work}/igq_state.pth'], str(root / 'reload'))
    assert 'IGQ: loaded calibrated state' in reloaded and miou(reloaded) == first
    distributed = run([configs['igq'], checkpoint], str(root / 'dist'), processes=2)
    assert 'identical on 2 rank(s)' in distributed
    assert fingerprint(distributed) == fingerprint(output)
    assert miou(distributed) == first
