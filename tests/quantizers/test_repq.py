"""RepQ-ViT's quantizers against their formulas (docs/method.md, section 8)."""
import pytest
import torch

from igq_plugin.quant import QuantMode, fake_quantize, qparams_from_bounds, quant_mode
from igq_plugin.quantizers import REPQ_PERCENTILES, LogSqrt2Quantizer, RepQQuantizer, build_activation_quantizer
from igq_plugin.quant.primitives import log_sqrt2_fake_quantize


def close(actual, expected):
    """Interpolated percentiles: torch.quantile rounds its interpolation differently."""
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5)


def calibrate(q, *batches):
    with quant_mode(q, QuantMode.CALIBRATE):
        for batch in batches:
            q(batch)
    q.finalize()
    return q


def quantized(q, x):
    with quant_mode(q, QuantMode.QUANTIZED):
        return q(x)


def outlier_tokens(tokens=300, channels=12, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(1, tokens, channels, generator=gen) * torch.linspace(0.2, 3, channels)
    x[0, 7, 2] = 40.0  # one outlier: clipping it wins at 4 bits
    return x


def brute_force_bounds(values, bits):
    """RepQ-ViT's search, written out with torch.quantile: the lowest-MSE candidate."""
    best = None
    for p in (0.999, 0.9999, 0.99999):
        lower, upper = torch.quantile(values, 1 - p), torch.quantile(values, p)
        scale, zero = qparams_from_bounds(lower, upper, bits)
        error = (fake_quantize(values, scale, zero, bits) - values).pow(2).mean()
        if best is None or error < best[0]:
            best = (error, lower, upper)
    return best[1], best[2]


def test_per_tensor_range_is_the_lowest_mse_percentile_pair():
    x = outlier_tokens()
    q = calibrate(RepQQuantizer(4, 12), x)
    lower, upper = brute_force_bounds(x.reshape(-1), 4)
    close(q.lower[0], lower)
    close(q.upper[0], upper)
    assert float(q.upper[0]) < 40.0  # the outlier is clipped
    scale, zero = qparams_from_bounds(q.lower[0], q.upper[0], 4)
    assert torch.equal(quantized(q, x), fake_quantize(x, scale, zero, 4))


def test_post_norm_quantizer_searches_every_channel_and_folds_to_mean_scale():
    x = outlier_tokens()
    q = calibrate(RepQQuantizer(4, 12, post_norm=True), x)
    for c in range(12):
        lower, upper = brute_force_bounds(x[..., c].reshape(-1), 4)
        close(q.lower[c], lower)
        close(q.upper[c], upper)
    with pytest.raises(RuntimeError, match='only after its fold'):
        quantized(q, x)
    scale, zero = q.channel_qparams()
    ratio, shift = q.fold()
    torch.testing.assert_close(q.fold_scale, scale.mean())
    torch.testing.assert_close(q.fold_zero, zero.mean())
    torch.testing.assert_close(ratio, scale / scale.mean())
    torch.testing.assert_close(shift, scale.mean() * (zero.mean() - zero))


def test_fold_reproduces_per_channel_codes_when_the_mean_zero_point_is_an_integer():
    x = outlier_tokens()
    q = calibrate(RepQQuantizer(4, 12, post_norm=True), x)
    # Zero points whose mean is an integer (the exact case of the fold).
    q.lower.copy_(-q.upper / 15 * torch.tensor([3.0, 5.0] * 6))
    scale, zero = q.channel_qparams()
    assert float(zero.mean()) == round(float(zero.mean()))
    ratio, shift = q.fold()
    folded = quantized(q, x / ratio - shift)  # the input the folded LayerNorm produces
    per_channel = fake_quantize(x, scale, zero, 4)
    torch.testing.assert_close((folded + shift) * ratio, per_channel, rtol=1e-5, atol=1e-5)


def test_log_sqrt2_quantizer_takes_the_lowest_mse_percentile_delta():
    attn = torch.softmax(torch.randn(2, 3, 49, 49) * 4, dim=-1)
    q = calibrate(build_activation_quantizer('repq', 4, kind='softmax'), attn)
    assert isinstance(q, LogSqrt2Quantizer)
    values = attn.reshape(-1)
    candidates = [torch.quantile(values[:2 ** 24], 1 - eps / 100) for eps in REPQ_PERCENTILES]
    errors = [(log_sqrt2_fake_quantize(values, d, 4) - values).pow(2).mean() for d in candidates]
    close(q.delta, candidates[int(torch.stack(errors).argmin())])
    out = quantized(q, attn)
    torch.testing.assert_close(out, log_sqrt2_fake_quantize(attn, q.delta, 4))
    levels = torch.unique(out)
    assert levels.numel() <= 17 and float(levels[0]) == 0.0  # 16 codes and the zero


def _percentile_search(values):
    """RepQ-ViT's search written out: ``(errors [3], lowers [3], uppers [3])``."""
    errors, lowers, uppers = torch.zeros(3), torch.zeros(3), torch.zeros(3)
    for i, p in enumerate((0.999, 0.9999, 0.99999)):
        lower, upper = torch.quantile(values, 1 - p), torch.quantile(values, p)
        scale, zero = qparams_from_bounds(lower, upper, 4)
        errors[i] = (fake_quantize(values, scale, zero, 4) - values).pow(2).mean()
        lowers[i], uppers[i] = lower, upper
    return errors, lowers, uppers


def test_several_batches_are_searched_once_together_by_default():
    x = outlier_tokens(seed=1)
    q = calibrate(RepQQuantizer(4, 12), x[:, :150], x[:, 150:])
    errors, lowers, uppers = _percentile_search(x.reshape(-1))
    best = int(errors.argmin())
    close(q.lower[0], lowers[best])
    close(q.upper[0], uppers[best])


def test_per_batch_search_sums_the_errors_and_averages_the_winning_bounds():
    x = outlier_tokens(seed=1)
    parts = (x[:, :150], x[:, 150:])
    per_batch = RepQQuantizer(4, 12)
    per_batch.one_batch = False  # QuantConfig(repq_search='per-batch')
    q = calibrate(per_batch, *parts)
    searches = [_percentile_search(part.reshape(-1)) for part in parts]
    errors = sum(search[0] for search in searches)
    best = int(errors.argmin())
    close(q.lower[0], sum(search[1][best] for search in searches) / 2)
    close(q.upper[0], sum(search[2][best] for search in searches) / 2)


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match='percentiles'):
        RepQQuantizer(4, 8, percentiles=(70.0,))
    with pytest.raises(ValueError, match='softmax'):
        RepQQuantizer(4, 8, kind='softmax')
    q = RepQQuantizer(4, 8, post_norm=True)
    with pytest.raises(RuntimeError, match='calibrated post_norm'):
        q.fold()
    with pytest.raises(ValueError, match='NaN or Inf'):
        calibrate(q, torch.full((1, 4, 8), float('nan')))
    with pytest.raises(ValueError, match='empty calibration'):
        RepQQuantizer(4, 8).finalize()


@pytest.mark.parametrize('kind', ['channel', 'softmax'])
def test_kept_activations_are_copies(kind):
    """The one-batch search keeps activations until finalize: a model that later changes
    them in place (an in-place activation, a residual ``+=``) must not move the bounds."""
    x = torch.softmax(outlier_tokens(seed=3), -1) if kind == 'softmax' else outlier_tokens(seed=3)
    build = (lambda: LogSqrt2Quantizer(4, name='q')) if kind == 'softmax' else \
        (lambda: RepQQuantizer(4, 12, post_norm=True))
    reference = calibrate(build(), x.clone())
    quantizer = build()
    quantizer.mode = QuantMode.CALIBRATE
    quantizer(x)
    x.mul_(100.0)
    quantizer.finalize()
    for name, buffer in reference.named_buffers():
        torch.testing.assert_close(dict(quantizer.named_buffers())[name], buffer)
