"""RepQ-ViT's components against an independent transcription of the authors' formulas.

The reference is the authors' published code (github zkkli/RepQ-ViT:
``classification/quant/quantizer.py``, the uniform and log2 quantizers and their
percentile search; ``classification/test_quant.py``, the scale reparameterization),
read and written out here from its equations, not copied. The three components:

- the fold of the per-channel post-LayerNorm scales into the LayerNorm's affine and the
  next Linear's weight and bias;
- the log2 quantizer with sqrt(2) resolution;
- the percentile candidates (99.9, 99.99, 99.999) chosen by the lowest MSE, per tensor
  and per channel.

Our quantizer deliberately widens every range to contain 0 (and so keeps the zero point
inside the code range). The equality tests use inputs whose candidate ranges contain 0
already, where that choice changes nothing; the last test shows the difference where it
applies (docs/method.md, section 8).
"""
import copy
import math

import torch

from igq_plugin.quant import QuantMode, quant_mode
from igq_plugin.quant.primitives import log_sqrt2_fake_quantize
from igq_plugin.quantizers import LogSqrt2Quantizer, RepQQuantizer

from tests.nn.test_reparam import PAIRS, Net, calibrated

OFFICIAL_PERCENTILES = (0.999, 0.9999, 0.99999)


# -- the authors' formulas, transcribed --------------------------------------------------

def official_uniform_search(values: torch.Tensor, bits: int):
    """(lower, upper, delta, zero) of the lowest-MSE percentile pair of ``values``."""
    levels = 2 ** bits
    best = None
    for pct in OFFICIAL_PERCENTILES:
        upper = torch.quantile(values.reshape(-1), pct)
        lower = torch.quantile(values.reshape(-1), 1.0 - pct)
        delta = (upper - lower) / (levels - 1)
        zero = torch.round(-lower / delta)
        dequantized = (torch.clamp(torch.round(values / delta) + zero, 0, levels - 1)
                       - zero) * delta
        score = (values - dequantized).abs().pow(2).mean()
        if best is None or score < best[0]:
            best = (score, lower, upper, delta, zero)
    return best[1:]


def official_log_sqrt2(values: torch.Tensor, delta: torch.Tensor, bits: int) -> torch.Tensor:
    """The log2 quantizer with sqrt(2) resolution: codes ``round(-2 log2(x / delta))``,
    values ``2^-ceil(q/2) * (sqrt(2) if q is odd else 1) * delta``, 0 past the last code."""
    levels = 2 ** bits
    code = torch.round(-2.0 * torch.log2(values / delta))
    beyond = code >= levels
    code = code.clamp(0, levels - 1)
    value = torch.pow(2.0, -torch.ceil(code / 2)) * ((code % 2) * (math.sqrt(2) - 1) + 1) * delta
    return torch.where(beyond, torch.zeros_like(value), value)


def official_log_delta(values: torch.Tensor, bits: int) -> torch.Tensor:
    best = None
    for pct in OFFICIAL_PERCENTILES:
        delta = torch.quantile(values.reshape(-1), pct)
        score = (values - official_log_sqrt2(values, delta, bits)).abs().pow(2).mean()
        if best is None or score < best[0]:
            best = (score, delta)
    return best[1]


def official_reparameterization(gamma, beta, weight, bias, delta, zero):
    """The fold: mean target scale and zero point; ``r = delta_c / mean``;
    ``b = min_c / r - target_min``; ``gamma / r``, ``beta / r - b``; ``W r``,
    ``bias + (W r) b``."""
    target_delta, target_zero = delta.mean(), zero.mean()
    r = delta / target_delta
    b = (-zero * delta) / r - (-target_zero * target_delta)
    new_weight = weight * r
    new_bias = (torch.zeros(weight.shape[0]) if bias is None else bias) + new_weight @ b
    return gamma / r, beta / r - b, new_weight, new_bias, target_delta, target_zero


# -- helpers -----------------------------------------------------------------------------

def calibrate(quantizer, batch):
    with quant_mode(quantizer, QuantMode.CALIBRATE):
        quantizer(batch)
    quantizer.finalize()
    return quantizer


def heavy_tailed(shape, seed=0):
    """Zero-centred values with heavy tails (the candidate ranges all contain 0)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=gen) * torch.exp(torch.randn(shape, generator=gen))


def close(actual, expected):
    # float32 interpolation of the percentiles, in another order than torch.quantile's
    torch.testing.assert_close(actual, expected.to(actual.dtype), rtol=1e-5, atol=1e-6)


# -- the tests ---------------------------------------------------------------------------

def test_per_tensor_search_equals_the_official_one():
    for seed in range(3):
        x = heavy_tailed((2, 200, 24), seed)
        q = calibrate(RepQQuantizer(4, 24), x)
        lower, upper, delta, zero = official_uniform_search(x, 4)
        close(q.lower[0], lower)
        close(q.upper[0], upper)
        scale, our_zero = q.channel_qparams()
        close(scale[0], delta)
        assert float(our_zero[0]) == float(zero)


def test_per_channel_search_equals_the_official_one():
    x = heavy_tailed((2, 300, 8), seed=4)
    q = calibrate(RepQQuantizer(4, 8, post_norm=True), x)
    for channel in range(8):
        lower, upper, _, _ = official_uniform_search(x[:, :, channel], 4)
        close(q.lower[channel], lower)
        close(q.upper[channel], upper)


def test_log_sqrt2_quantizer_equals_the_official_one():
    delta = torch.tensor(0.6)
    values = torch.cat([torch.tensor([0.0, 1e-9, 0.6, 0.9, 1.0]),
                        torch.rand(500, generator=torch.Generator().manual_seed(0)) ** 4])
    for bits in (3, 4, 6):
        torch.testing.assert_close(log_sqrt2_fake_quantize(values, delta, bits),
                                   official_log_sqrt2(values, delta, bits), rtol=1e-6, atol=0)


def test_log_sqrt2_delta_search_equals_the_official_one():
    logits = torch.randn(4, 2, 49, 49, generator=torch.Generator().manual_seed(1)) * 3
    attention = logits.softmax(-1)
    q = calibrate(LogSqrt2Quantizer(4), attention)
    close(q.delta, official_log_delta(attention, 4))


def test_fold_equals_the_official_reparameterization():
    reference, model = Net(), calibrated('repq')
    for linear_name, norm_name in PAIRS.items():
        quantizer = model.get_submodule(linear_name).input_quantizer
        delta, zero = quantizer.channel_qparams()
        norm, linear = reference.get_submodule(norm_name), reference.get_submodule(linear_name)
        gamma, beta, weight, bias, target_delta, target_zero = official_reparameterization(
            norm.weight.detach(), norm.bias.detach(), linear.weight.detach(),
            None if linear.bias is None else linear.bias.detach(), delta, zero)
        folded_norm, folded_linear = (model.get_submodule(norm_name),
                                      model.get_submodule(linear_name))
        # float32 products of the same factors, in another order: a few ulps
        for ours, theirs in ((folded_norm.weight, gamma), (folded_norm.bias, beta),
                             (folded_linear.weight, weight), (folded_linear.bias, bias)):
            torch.testing.assert_close(ours.detach(), theirs, rtol=1e-5, atol=1e-5)
        close(quantizer.fold_scale, target_delta)
        close(quantizer.fold_zero, target_zero)  # the mean zero point, not rounded


def test_deliberate_difference_the_range_contains_zero():
    """All-positive inputs: the official range [l, u] with l > 0 gets a negative zero
    point that no code can hold and 0 is not representable; ours quantizes [0, u]."""
    x = heavy_tailed((1, 400, 4), seed=5).abs() + 2.0
    q = calibrate(RepQQuantizer(4, 4), copy.deepcopy(x))
    lower, upper, delta, zero = official_uniform_search(x, 4)
    assert float(lower) > 0 and float(zero) < 0
    scale, our_zero = q.channel_qparams()
    close(scale[0], upper / 15)  # [0, u]: the lower bound widened to 0
    assert float(our_zero[0]) == 0.0
