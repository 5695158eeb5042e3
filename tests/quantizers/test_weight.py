import pytest
import torch

from igq_plugin.quant import QuantMode, quant_mode
from igq_plugin.quantizers import WeightQuantizer, search_weight_qparams
from igq_plugin.quant.primitives import fake_quantize, qparams_from_bounds


def test_weight_search_never_worse_than_minmax():
    torch.manual_seed(0)
    w = torch.randn(32, 64)
    w[:, 0] = 12.0  # an outlier per channel: clipping it helps at 4 bits
    scale, zero = search_weight_qparams(w, 4)
    s_mm, z_mm = qparams_from_bounds(w.amin(1), w.amax(1), 4)
    err = (fake_quantize(w, scale[:, None], zero[:, None], 4) - w).pow(2).mean(1)
    err_mm = (fake_quantize(w, s_mm[:, None], z_mm[:, None], 4) - w).pow(2).mean(1)
    assert (err <= err_mm + 1e-7).all()


def test_weight_quantizer_modes_and_errors():
    w = torch.randn(8, 3, 3, 3)
    quantizer = WeightQuantizer(4, 8)
    assert quantizer(w) is w  # float mode
    with quant_mode(quantizer, 'quantized'):
        with pytest.raises(RuntimeError, match='before calibration'):
            quantizer(w)
    quantizer.fit(w)
    with quant_mode(quantizer, 'quantized'):
        wq = quantizer(w)
    assert wq.shape == w.shape
    assert all(torch.unique(wq[c]).numel() <= 16 for c in range(8))
    with pytest.raises(ValueError, match='output channels'):
        quantizer.fit(torch.randn(4, 3))
    with pytest.raises(ValueError, match='NaN'):
        quantizer.fit(torch.full((8, 2), float('nan')))
    with pytest.raises(ValueError, match='percentiles'):
        search_weight_qparams(w, 4, percentiles=(60.0,))


def test_quantized_weight_follows_weight_and_parameter_changes():
    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(6, 5))
    quantizer = WeightQuantizer(4, 6)
    quantizer.fit(weight.detach())
    quantizer.mode = QuantMode.QUANTIZED
    with torch.no_grad():
        first = quantizer(weight)
        weight.mul_(2)  # in place, as load_state_dict does
        second = quantizer(weight)
        assert not torch.equal(second, first)
        quantizer.fit(weight)  # new scales
        third = quantizer(weight)
        assert not torch.equal(third, second)
        reference = fake_quantize(weight, quantizer.scale[:, None],
                                  quantizer.zero_point[:, None], 4)
        assert torch.equal(third, reference)
    # with autograd: a fresh tensor carrying the straight-through gradient
    out = quantizer(weight)
    assert out is not third and out.requires_grad
    out.sum().backward()
    assert weight.grad is not None
