"""Minimum-error group bounds (``bounds='mse'``): histograms, the error model, the choice."""
import pytest
import torch

from igq_plugin.grouping import assign_covering, fit_group_ranges
from igq_plugin.grouping.bounds import (INTERPOLATION_STEPS, MAX_HIST_ITEMS, ItemHistograms,
                                        expected_errors, item_histograms, minimum_error_bounds)
from igq_plugin.quant import quant_mode
from igq_plugin.quantizers import IGQQuantizer
from igq_plugin.quant.primitives import fake_quantize, qparams_from_bounds
from tests.quantizer_helpers import calibrate, quantized


def channel_histograms(x):
    """Histograms of the channels of ``x [T, C]`` (one instance)."""
    lower, upper = x.amin(0), x.amax(0)
    item = torch.arange(x.shape[1]).view(1, -1)
    return item_histograms(x, item, lower, upper), lower, upper


def actual_errors(x, lower, upper, bits):
    scale, zero = qparams_from_bounds(lower, upper, bits)
    return (fake_quantize(x, scale, zero, bits) - x).double().pow(2).sum(0)


def test_histograms_hold_every_value_of_their_item_once():
    x = torch.randn(300, 7, generator=torch.Generator().manual_seed(0))
    hist, _, _ = channel_histograms(x)
    assert hist.count.sum(1).tolist() == [300.0] * 7
    assert torch.allclose(hist.total.sum(1), x.double().sum(0))
    assert torch.allclose(hist.square.sum(1), x.double().pow(2).sum(0))
    assert hist.count[:, 0].min() >= 1 and hist.count[:, -1].min() >= 1  # m and M themselves


def test_clipped_bins_and_coarse_steps_are_exact():
    """A quantizer whose range ends below most values, with a step wider than every bin:
    every bin maps to one code, so the model is the actual error."""
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(500, 5, generator=gen) * 3 + 2  # values in [2, 5]
    hist, _, _ = channel_histograms(x)
    lower, upper = torch.zeros(5), torch.full((5,), 1.5)  # 2 bits: step 0.5, clips above 1.5
    model = expected_errors(hist, lower, upper, 2)
    actual = actual_errors(x, lower, upper, 2)
    single = (x > 1.75).all()  # every bin beyond the last rounding boundary
    assert single
    assert torch.allclose(model, actual, rtol=1e-9)


@pytest.mark.parametrize('bits', [4, 6])
def test_model_tracks_the_actual_error(bits, vit_activations):
    x = vit_activations(1, 2000, 24, seed=3)[0]
    hist, lower, upper = channel_histograms(x)
    for shrink in (1.0, 0.6, 0.3):  # no clipping, some, much
        model = expected_errors(hist, lower * shrink, upper * shrink, bits)
        actual = actual_errors(x, lower * shrink, upper * shrink, bits)
        assert torch.allclose(model.sum(), actual.sum(), rtol=0.1), (shrink, model.sum(),
                                                                      actual.sum())


def test_chosen_bounds_have_the_lowest_modelled_error(vit_activations):
    x = vit_activations(4, 200, 32, seed=4)
    ranges = [channel_histograms(image) for image in x]
    hist = ItemHistograms.concat([h for h, _, _ in ranges])
    fit = fit_group_ranges(hist.lower.float(), hist.upper.float(), 4)
    envelope = fit.envelope(hist.lower.float(), hist.upper.float())
    lower, upper, step = minimum_error_bounds(hist, (fit.lower, fit.upper), envelope, 4,
                                              assign_covering)
    assert step in INTERPOLATION_STEPS
    widest = int(torch.argmax(envelope[1] - envelope[0]))

    def bounds(t):
        gl = fit.lower + t * (envelope[0] - fit.lower)
        gu = fit.upper + t * (envelope[1] - fit.upper)
        gl[widest], gu[widest] = envelope[0][widest], envelope[1][widest]
        return gl, gu

    def error(t):
        gl, gu = bounds(t)
        group = assign_covering(hist.lower.float(), hist.upper.float(), gl, gu)
        return float(expected_errors(hist, gl[group], gu[group], 4).sum())

    assert all(error(step) <= error(t) + 1e-9 for t in INTERPOLATION_STEPS)
    assert torch.equal(lower, bounds(step)[0]) and torch.equal(upper, bounds(step)[1])
    # the widest group spans every calibration range: no calibration item is clipped
    assert float(lower.min()) == float(hist.lower.min())
    assert float(upper.max()) == float(hist.upper.max())


def calibrated(bounds, groups, *batches, bits=4):
    return calibrate(IGQQuantizer(bits, batches[0].shape[-1], groups=groups, bounds=bounds),
                     *batches)


def held_out_error(quantizer, x):
    return float((quantized(quantizer, x) - x).pow(2).sum() / x.pow(2).sum())


def test_one_group_is_the_per_tensor_quantizer(vit_activations):
    x = vit_activations(3, 100, 16, seed=7)
    mse, envelope = calibrated('mse', 1, x), calibrated('envelope', 1, x)
    assert torch.equal(mse.active_ranges()[0], envelope.active_ranges()[0])
    assert torch.equal(mse.active_ranges()[1], envelope.active_ranges()[1])


@pytest.mark.parametrize('groups', [2, 4, 8])
def test_calibration_error_is_at_most_the_envelopes(groups, vit_activations):
    """The bounds minimise the modelled error; the actual error on the calibration data
    follows it (the envelope is one of the candidates)."""
    x = vit_activations(2, 300, 48, seed=8)
    mse, envelope = calibrated('mse', groups, x), calibrated('envelope', groups, x)
    assert held_out_error(mse, x) <= 1.02 * held_out_error(envelope, x)


def test_fine_steps_keep_the_envelope():
    """At 12 bits the rounding error is tiny: clipping any value costs more than it saves."""
    gen = torch.Generator().manual_seed(5)
    x = (torch.rand(2, 500, 16, generator=gen) - 0.5) * torch.linspace(1, 4, 16)
    quantizer = calibrated('mse', 1, x, bits=12)
    assert quantizer.bound_steps[1] == 1.0
    assert torch.equal(quantizer.active_ranges()[1],
                       calibrated('envelope', 1, x, bits=12).active_ranges()[1])


def test_softmax_rows_are_sampled_within_the_item_budget():
    gen = torch.Generator().manual_seed(6)
    maps = torch.softmax(torch.randn(2 * MAX_HIST_ITEMS // 16 + 3, 16, 16, generator=gen) * 3,
                         dim=-1)
    quantizer = IGQQuantizer(4, kind='softmax', groups=4, bounds='mse')
    with quant_mode(quantizer, 'calibrate'):
        quantizer(maps)
        quantizer(maps)
    assert len(quantizer._histograms) <= MAX_HIST_ITEMS
    assert float(quantizer._histograms.lower.abs().max()) == 0.0
    quantizer.finalize()
    lower, upper = quantizer.active_ranges()
    assert float(lower.abs().max()) == 0.0 and bool((upper > 0).all())
    assert quantizer._histograms is None or len(quantizer._histograms) > 0
