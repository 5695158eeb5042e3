"""Calibrate and run a single activation quantizer (shared by the quantizer tests)."""
import torch

from igq_plugin.quant import quant_mode


def calibrate(quantizer, *batches, num_instances=None):
    """Observe ``batches`` in calibrate mode, then finalize; returns the quantizer."""
    quantizer.num_instances = num_instances
    with quant_mode(quantizer, 'calibrate'):
        for batch in batches:
            quantizer(batch)
    quantizer.finalize()
    return quantizer


def quantized(quantizer, x):
    """The quantizer's output on ``x`` in quantized mode."""
    with torch.no_grad(), quant_mode(quantizer, 'quantized'):
        return quantizer(x)


def activations(*shape, seed=0, channel_dim=-1):
    """Channels with spread-out ranges and offsets (some channels all >= 0)."""
    gen = torch.Generator().manual_seed(seed)
    bshape = [1] * len(shape)
    bshape[channel_dim] = shape[channel_dim]
    width = torch.exp(torch.randn(bshape, generator=gen))
    out = torch.randn(shape, generator=gen) * width + torch.randn(bshape, generator=gen)
    return out.abs() if seed % 3 == 2 else out
