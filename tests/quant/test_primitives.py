import pytest
import torch

from igq_plugin.quant import (check_bits, dequantize, fake_quantize, fake_quantize_bounds,
                              qmax, qparams_from_bounds, quantize)


@pytest.mark.parametrize('bits', [2, 4, 6, 8])
def test_per_tensor_matches_torch_reference(bits):
    x = torch.randn(1000) * 3
    scale, zero = qparams_from_bounds(torch.tensor(-2.5), torch.tensor(4.0), bits)
    ours = fake_quantize(x, scale, zero, bits)
    ref = torch.fake_quantize_per_tensor_affine(x, float(scale), int(zero), 0, qmax(bits))
    assert torch.equal(ours, ref)


@pytest.mark.parametrize('bits', [3, 4, 8])
def test_per_channel_matches_torch_reference(bits):
    x = torch.randn(16, 50) * torch.linspace(0.1, 5, 16)[:, None]
    lower, upper = x.amin(1), x.amax(1)
    scale, zero = qparams_from_bounds(lower, upper, bits)
    ours = fake_quantize(x, scale[:, None], zero[:, None], bits)
    ref = torch.fake_quantize_per_channel_affine(x, scale, zero.int(), 0, 0, qmax(bits))
    assert torch.equal(ours, ref)


def test_quantize_dequantize_roundtrip_equals_fake_quantize():
    x = torch.randn(200)
    scale, zero = qparams_from_bounds(x.min(), x.max(), 4)
    q = quantize(x, scale, zero, 4)
    assert q.min() >= 0 and q.max() <= 15 and torch.equal(q, q.round())
    assert torch.equal(dequantize(q, scale, zero), fake_quantize(x, scale, zero, 4))


@pytest.mark.parametrize('bits', [2, 4, 8])
def test_idempotent_and_in_range_error_at_most_half_step(bits):
    x = torch.randn(4096) * 2
    lower, upper = torch.tensor(-1.5), torch.tensor(2.0)
    scale, zero = qparams_from_bounds(lower, upper, bits)
    once = fake_quantize(x, scale, zero, bits)
    assert torch.equal(fake_quantize(once, scale, zero, bits), once)
    representable_lo = -zero * scale
    representable_hi = (qmax(bits) - zero) * scale
    inside = (x >= representable_lo) & (x <= representable_hi)
    assert inside.sum() > 100
    assert ((once - x)[inside].abs() <= scale / 2 + 1e-6).all()


def test_zero_is_exact_and_constant_channel_is_finite():
    scale, zero = qparams_from_bounds(torch.tensor(0.3), torch.tensor(0.3), 4)
    out = fake_quantize(torch.tensor([0.0, 0.3]), scale, zero, 4)
    assert torch.isfinite(out).all() and out[0] == 0


def test_straight_through_gradient_masks_clamped_values():
    x = torch.tensor([-10.0, 0.2, 0.7, 10.0], requires_grad=True)
    scale, zero = qparams_from_bounds(torch.tensor(-1.0), torch.tensor(1.0), 4)
    fake_quantize(x, scale, zero, 4).sum().backward()
    ref_x = x.detach().clone().requires_grad_(True)
    torch.fake_quantize_per_tensor_affine(ref_x, float(scale), int(zero), 0, 15).sum().backward()
    assert torch.equal(x.grad, ref_x.grad)


@pytest.mark.parametrize('bits', [1, 17, 0, 4.0, True, '4'])
def test_bad_bits_raise_naming_value(bits):
    with pytest.raises(ValueError, match=r'2\.\.16'):
        check_bits(bits)
    with pytest.raises(ValueError):
        fake_quantize_bounds(torch.zeros(2), torch.tensor(0.), torch.tensor(1.), bits)


class TestLogSqrt2Quantizer:
    """RepQ-ViT's softmax quantizer: q = clamp(round(-2 log2(x / d)), 0, 2^b - 1),
    x_hat = d 2^(-q/2); x = 0 and codes past the top dequantize to 0."""

    def test_codes_and_values_follow_the_formulas(self):
        from igq_plugin.quant.primitives import log_sqrt2_codes, log_sqrt2_fake_quantize
        delta, bits = 0.8, 4
        x = torch.rand(2000, dtype=torch.float64) * 0.8 + 1e-3
        expected = torch.round(-2 * torch.log2(x / delta)).clamp(0, 2 ** bits - 1)
        codes = log_sqrt2_codes(x, delta, bits)
        inside = (-2 * torch.log2(x / delta)).round() <= 2 ** bits - 1
        assert torch.equal(codes[inside], expected[inside].long())
        assert (codes[~inside] == -1).all()
        values = log_sqrt2_fake_quantize(x, delta, bits)
        assert torch.allclose(values[inside], delta * 2 ** (-expected[inside] / 2))
        assert (values[~inside] == 0).all()

    def test_zero_clamping_and_idempotence(self):
        from igq_plugin.quant.primitives import log_sqrt2_codes, log_sqrt2_fake_quantize
        x = torch.tensor([0.0, 5.0, 1.0, 2 ** -8.0, 2 ** -7.4])
        assert log_sqrt2_codes(x, 1.0, 4).tolist() == [-1, 0, 0, -1, 15]
        values = log_sqrt2_fake_quantize(x, 1.0, 4)
        assert values[0] == 0 and values[1] == 1.0 and values[3] == 0  # zero, clamp, past top
        assert torch.equal(log_sqrt2_fake_quantize(values, 1.0, 4), values)

    def test_relative_error_within_half_a_sqrt2_step(self):
        from igq_plugin.quant.primitives import log_sqrt2_fake_quantize
        x = torch.logspace(-3, 0, 500, base=2.0, dtype=torch.float64)  # codes 0..6
        error = (log_sqrt2_fake_quantize(x, 1.0, 4) / x).log2().abs()
        assert error.max() <= 0.25 + 1e-12  # half of the 1/2-octave step, in log2
