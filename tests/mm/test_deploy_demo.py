"""Deployment end to end on the demo models (slow): export, delete the float checkpoint,
evaluate with the stock tools/test.py, compare with the fake-quant evaluation."""
import json
import os.path as osp

import pytest

from tests.tool_loader import load_tool

pytestmark = pytest.mark.slow
REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


def deploy_tool():
    return load_tool('deploy_demo')


@pytest.mark.parametrize('model, method, variant', [
    ('mask-rcnn', 'igq', 'plain'), ('upernet-vit', 'igq', 'plain'),
    ('mask-rcnn', 'igq-reparam', 'pretrained-like')])
def test_exported_file_evaluates_like_the_fake_quant_model(model, method, variant, tmp_path,
                                                           monkeypatch):
    monkeypatch.chdir(REPO)
    tool = deploy_tool()
    assert tool.main(['--models', model, '--bits', '4', '--method', method, '--variant',
                      variant, '--out', str(tmp_path)]) == 0

    (result,) = json.load(open(tmp_path / 'deploy.json'))
    assert (result['method'], result['variant']) == (method, variant)
    # the same quantized model evaluated twice: metrics agree to the metric's rounding
    for metric, value in result['fake_quant'].items():
        assert result['deployed'][metric] == pytest.approx(value, abs=1e-4), metric
    assert not (tmp_path / tool.run_label(model, 4, method, variant) / 'float.pth').exists()
    assert (tmp_path / tool.run_label(model, 4, method, variant) / 'model.igq.safetensors').exists()
    # 4-bit codes are 0.25 of float16; the folded LayerNorm affines and biases of
    # igq-reparam are not float16-exact and stay float32
    assert result['sizes']['backbone_neck_ratio'] <= (0.31 if method == 'igq-reparam' else 0.3)
