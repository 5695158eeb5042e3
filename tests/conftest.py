"""Shared fixtures: synthetic activations with ViT-like per-instance channel ranges."""
import pytest
import torch


def vit_like_activations(instances: int, tokens: int, channels: int, seed: int = 0):
    """``[I, T, C]`` activations whose channel ranges change from image to image.

    Every channel has a base scale (a few outlier channels are much wider) and every
    (image, channel) pair a random multiplicative scale and shift, as ViT activations
    after LayerNorm show.
    """
    gen = torch.Generator().manual_seed(seed)
    base_scale = torch.exp(torch.randn(1, 1, channels, generator=gen) * 0.5)
    base_scale[..., :max(1, channels // 16)] *= 8.0
    instance_scale = torch.exp(torch.randn(instances, 1, channels, generator=gen) * 0.8)
    shift = torch.randn(instances, 1, channels, generator=gen) * 0.5 * base_scale
    values = torch.randn(instances, tokens, channels, generator=gen)
    return values * base_scale * instance_scale + shift


@pytest.fixture
def vit_activations():
    return vit_like_activations
