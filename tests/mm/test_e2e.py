"""End to end through mmdet's stock tools/test.py (slow: run with ``pytest -m slow``).

A tiny synthetic COCO dataset and a randomly initialised demo detector: the metrics
are near zero, but every step runs for real (calibration, allocation, COCO bbox and
segm evaluation of the quantized model, state file, distributed launch).
"""
import os
import os.path as osp
import re
import subprocess
import sys

import mmdet
import pytest
import torch

from igq_demo.synthetic_coco import generate_dataset

pytestmark = pytest.mark.slow

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
TEST_PY = osp.join(osp.dirname(mmdet.__file__), '.mim', 'tools', 'test.py')
FLOAT_CONFIG = osp.join(REPO, 'configs/demo/mask-rcnn_swin-demo-p4-w7_fpn_synthetic-coco.py')
QUANT_CONFIG = osp.join(REPO, 'configs/demo/igq-w4a4_mask-rcnn_swin-demo-p4-w7_fpn_synthetic-coco.py')


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp('e2e')
    data = osp.join(root, 'data')
    generate_dataset(data, seed=1, num_train=1, num_val=3, image_size=(96, 96))
    from mmengine.config import Config
    from mmengine.registry import MODELS, init_default_scope
    init_default_scope('mmdet')
    torch.manual_seed(0)
    model = MODELS.build(Config.fromfile(FLOAT_CONFIG).model)
    checkpoint = osp.join(root, 'float.pth')
    torch.save(dict(state_dict=model.state_dict(), meta=dict(note='random init')), checkpoint)
    return root, data, checkpoint


def options(data, *extra):
    return ['--cfg-options', f'test_dataloader.dataset.data_root={data}/',
            f'train_dataloader.dataset.data_root={data}/', 'custom_hooks.0.num_images=1',
            f'test_evaluator.ann_file={data}/annotations/instances_val.json',
            'test_dataloader.num_workers=0', 'test_dataloader.persistent_workers=False',
            'model.backbone.quant.candidates=[1,4]', 'model.backbone.quant.groups=4', *extra]


def run(args, work_dir, processes=1):
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS='1')
    if processes == 1:
        command = [sys.executable, TEST_PY]
    else:  # the stock test.py through torchrun; see tools/dist_test.py for why a wrapper
        command = [sys.executable, '-m', 'torch.distributed.run', f'--nproc_per_node={processes}',
                   '--master_port=29613', osp.join(REPO, 'tools', 'dist_test.py')]
    result = subprocess.run(command + args + ['--work-dir', work_dir], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=900)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    return output


def metrics(output):
    found = dict(re.findall(r'coco/(bbox_mAP|segm_mAP): (-?[0-9.]+)', output))
    assert set(found) == {'bbox_mAP', 'segm_mAP'}, output[-3000:]
    return {k: float(v) for k, v in found.items()}


def fingerprint(output):
    return re.search(r'quantizer buffers fingerprint (\w+)', output).group(1)


def test_stock_test_py_quantizes_calibrates_and_evaluates(setup):
    root, data, checkpoint = setup
    work = osp.join(root, 'single')
    output = run([QUANT_CONFIG, checkpoint] + options(data), work)
    assert 'IGQ quantized layers:' in output and 'IGQ calibration: method=igq' in output
    assert 'IGQ: evaluating the quantized model' in output
    assert osp.isfile(osp.join(work, 'igq_state.pth'))
    first = metrics(output)
    assert all(0.0 <= v <= 1.0 or v == -1.0 for v in first.values())

    # the saved state reproduces the evaluation without calibrating again
    reloaded = run([QUANT_CONFIG, checkpoint] + options(
        data, f'custom_hooks.0.state_file={work}/igq_state.pth'), osp.join(root, 'reload'))
    assert 'IGQ: loaded calibrated state' in reloaded and 'IGQ calibration:' not in reloaded
    assert metrics(reloaded) == first
    assert fingerprint(reloaded) == fingerprint(output)

    # two processes (gloo): identical buffers on both ranks, the same metrics
    distributed = run([QUANT_CONFIG, checkpoint] + options(data), osp.join(root, 'dist'),
                      processes=2)
    assert 'identical on 2 rank(s)' in distributed
    assert fingerprint(distributed) == fingerprint(output)
    assert metrics(distributed) == first


def test_state_file_from_another_config_is_refused(setup):
    root, data, checkpoint = setup
    work = osp.join(root, 'single')
    if not osp.isfile(osp.join(work, 'igq_state.pth')):
        pytest.skip('needs the state written by the previous test')
    env = dict(os.environ, PYTHONPATH=REPO)
    args = [sys.executable, TEST_PY, QUANT_CONFIG, checkpoint, '--work-dir',
            osp.join(root, 'bad')] + options(
        data, f'custom_hooks.0.state_file={work}/igq_state.pth', 'model.backbone.quant.a_bits=6')
    result = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode != 0
    assert 'calibrated with other settings (a_bits: state 4, now 6)' in result.stderr + result.stdout


def test_repq_folds_the_same_weights_on_every_rank(setup):
    """RepQ-ViT changes float weights at calibration: rank 1 refolds them from rank 0's
    broadcast buffers, so 1 and 2 processes give the same buffers and metrics."""
    root, data, checkpoint = setup
    args = [QUANT_CONFIG, checkpoint] + options(data, 'model.backbone.quant.method=repq')
    single = run(args, osp.join(root, 'repq'))
    assert 'IGQ calibration: method=repq' in single
    distributed = run(args, osp.join(root, 'repq-dist'), processes=2)
    assert 'identical on 2 rank(s)' in distributed
    assert fingerprint(distributed) == fingerprint(single)
    assert metrics(distributed) == metrics(single)
