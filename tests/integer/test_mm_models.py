"""The integer executor on a tiny mmdet Swin Mask R-CNN (backbone and neck)."""
import pytest
import torch

pytest.importorskip('mmdet')
from mmengine.registry import MODELS, init_default_scope  # noqa: E402

import igq_plugin.mm  # noqa: E402,F401
from igq_plugin.integer import to_integer_model  # noqa: E402
from igq_plugin.mm import calibrate_mm_model, quantize_mm_model  # noqa: E402

from tests.integer import RELATIVE_TOLERANCE, capture_layers, replay_errors  # noqa: E402
from tests.mm.tiny_models import tiny_batches, tiny_model_cfg  # noqa: E402


@pytest.mark.parametrize('method', ['igq-fixed', 'igq-reparam'])
def test_tiny_detector_layers_agree_and_it_predicts(method):
    """igq-reparam: the folded projections, stage 4's padded windows among them."""
    init_default_scope('mmdet')
    torch.manual_seed(0)
    quant = dict(method=method, w_bits=4, a_bits=4, groups=4, candidates=(1, 4))
    model = MODELS.build(tiny_model_cfg(quant=quant)).eval()
    quantize_mm_model(model)
    batches = tiny_batches(model, 3)
    calibrate_mm_model(model, batches[:1], progress=None)
    inputs = torch.cat([batches[1]['inputs'], batches[2]['inputs']])  # 2 images, own groups
    captured = capture_layers(model, lambda: model.extract_feat(inputs))
    with torch.no_grad():
        fake = model.extract_feat(inputs)
    record = to_integer_model(model)
    assert sum(1 for n in record.layers if n.startswith('neck.')) == 8  # lateral + FPN
    assert all(record.methods[n] in (method, 'fixed-range') for n in record.layers)
    folded = [n for n, m in model.named_modules() if getattr(m, 'fold_padding', None) is not None]
    assert bool(folded) == (method == 'igq-reparam')
    errors = replay_errors(model, captured)
    assert max(errors.values()) <= RELATIVE_TOLERANCE, errors
    with torch.no_grad():
        features = model.extract_feat(inputs)
        predictions = model(batches[1]['inputs'], batches[1]['data_samples'], mode='predict')
    assert [f.shape for f in features] == [f.shape for f in fake]
    assert all(f.is_contiguous() for f in features)  # mmcv's RoIAlign reads NCHW memory
    assert predictions[0].pred_instances.bboxes.shape[1] == 4
