"""The switches to RepQ-ViT's published behaviour (``QuantConfig.repq_published``)."""
import pytest
import torch

from igq_plugin import QuantConfig, calibrate_model, quantize_model
from igq_plugin.quant import QuantMode, qparams_from_bounds
from igq_plugin.quant.primitives import fake_quantize
from igq_plugin.nn import activation_quantizers
from igq_plugin.quantizers import LogSqrt2Quantizer, RepQQuantizer

from ..nn.test_reparam import PAIRS, Net, forward


def test_ranges_as_found_keep_the_full_resolution_of_a_positive_range():
    lower, upper = torch.tensor(2.0), torch.tensor(5.0)
    scale, zero = qparams_from_bounds(lower, upper, 4, include_zero=False)
    torch.testing.assert_close(scale, torch.tensor(0.2))
    assert float(zero) == -10.0  # outside the code range: not clamped
    x = torch.linspace(2.0, 5.0, 61)
    error = (fake_quantize(x, scale, zero, 4) - x).abs().max()
    assert error <= 0.1 + 1e-6  # half a step of 3 / 15
    widened_scale, _ = qparams_from_bounds(lower, upper, 4)
    torch.testing.assert_close(widened_scale, torch.tensor(5.0 / 15))


def test_repq_quantizer_with_ranges_as_found():
    x = 2.0 + 3.0 * torch.rand(64, 8, generator=torch.Generator().manual_seed(0))
    errors = {}
    for include_zero in (True, False):
        quantizer = RepQQuantizer(4, channels=8, name='q', include_zero=include_zero)
        quantizer.mode = QuantMode.CALIBRATE
        quantizer(x)
        quantizer.finalize()
        quantizer.mode = QuantMode.QUANTIZED
        errors[include_zero] = float((quantizer(x) - x).pow(2).mean())
    assert errors[False] < 0.5 * errors[True]


def test_padding_switch_leaves_padded_tokens_at_zero():
    batches = [torch.randn(2, 24, 6, generator=torch.Generator().manual_seed(1))]
    for published, expect_padding in (((), True), (('padding',), False)):
        model = Net()
        quantize_model(model, QuantConfig(method='repq', repq_published=published))
        calibrate_model(model, batches, forward)
        for linear in PAIRS:
            padding = model.get_submodule(linear).fold_padding
            assert (padding is not None) == expect_padding


def test_first_weights_switch_keeps_only_the_first_input_at_8_bits():
    for published, weight_bits in (((), 8), (('first-weights',), 4)):
        model = Net()
        quantize_model(model, QuantConfig(method='repq', repq_published=published),
                       first_layers=('embed',))
        assert model.embed.weight_quantizer.bits == weight_bits
        assert model.embed.input_quantizer.bits == 8
        assert model.head.weight_quantizer.bits == 4


def _calibrated(quantizer, batches):
    quantizer.mode = QuantMode.CALIBRATE
    for batch in batches:
        quantizer(batch)
    quantizer.finalize()
    return quantizer


@pytest.mark.parametrize('kind', ['channel', 'softmax'])
def test_one_batch_searches_once_over_every_batch(kind):
    """'one-batch' (the default): two batches calibrate as their concatenation in one
    batch does; 'per-batch' averages the batches' bounds, which differs when they differ."""
    generator = torch.Generator().manual_seed(2)
    if kind == 'channel':
        batches = [torch.randn(1, 50, 8, generator=generator) * scale for scale in (1.0, 4.0)]
        build = lambda: RepQQuantizer(4, channels=8, name='q', post_norm=True)  # noqa: E731
        bounds = lambda q: (q.lower.clone(), q.upper.clone())  # noqa: E731
    else:
        batches = [torch.softmax(torch.randn(1, 2, 10, 10, generator=generator) * scale, -1)
                   for scale in (1.0, 5.0)]
        build = lambda: LogSqrt2Quantizer(4, name='q')  # noqa: E731
        bounds = lambda q: (q.delta.clone(),)  # noqa: E731
    together = _calibrated(build(), [torch.cat(batches)])
    for a, b in zip(bounds(_calibrated(build(), batches)), bounds(together)):
        torch.testing.assert_close(a, b)
    per_batch = build()
    per_batch.one_batch = False
    averaged = bounds(_calibrated(per_batch, batches))
    assert not all(torch.allclose(a, b) for a, b in zip(averaged, bounds(together)))


@pytest.mark.parametrize('search, expected', [('one-batch', True), ('per-batch', False)])
def test_repq_search_reaches_repq_quantizers_only(search, expected):
    for method, flag in (('repq', expected), ('igq', None)):
        model = Net()
        quantize_model(model, QuantConfig(method=method, repq_search=search))
        flags = {getattr(q, 'one_batch', None) for q in activation_quantizers(model).values()
                 if q.method == method}
        assert flags == {flag}


@pytest.mark.parametrize('value', ['per-image', 'one_batch', None])
def test_repq_search_refuses_unknown_values(value):
    with pytest.raises(ValueError, match=r"repq_search=.*allowed are \('one-batch', 'per-batch'\)"):
        QuantConfig(method='repq', repq_search=value)


@pytest.mark.parametrize('value', ['range', ('range', 'order'), ('pad',), ('one-batch',)])
def test_unknown_switches_are_refused_by_name(value):
    with pytest.raises(ValueError, match='repq_published=.*allowed are subsets of'):
        QuantConfig(method='repq', repq_published=value)
