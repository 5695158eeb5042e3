"""Pretrained-like channel outliers: a stress variant of a float model, same function.

Pretrained vision transformers have a few post-LayerNorm channels far wider than the
rest: the top channels are often 10-100x the median range (RepQ-ViT, Li et al., ICCV
2023, Fig. 1; IGQ-ViT, Moon et al., CVPR 2024, Fig. 1), and the LayerNorm's affine
``gamma`` is what carries them (Outlier Suppression, Wei et al., NeurIPS 2022,
section 3). Models trained briefly from scratch, like this project's demo models, do
not have them: their widest post-LN channel is about 2x the median.

The variant reproduces that statistic without changing what the model computes. For
every LayerNorm -> Linear pair (Swin: ``norm1`` -> ``qkv``, ``norm2`` -> ``fc1``, patch
merging ``norm`` -> ``reduction``; ViT: ``norm1`` -> ``qkv`` / ``in_proj``, ``norm2`` ->
``fc1``; the pairs of :func:`igq_plugin.nn.post_norm_linears`) it multiplies the
LayerNorm's ``gamma`` and ``beta`` by per-channel factors ``f`` and divides the Linear's
input columns by the same ``f``::

    LN'(x) = f * LN(x),    W' = W / f    =>    W' LN'(x) = W LN(x)

(a zero-padded token after the LayerNorm, as in Swin's windows, stays 0 on both sides).

The factors (:class:`OutlierProfile`): a few percent of the channels (at least one per
LayerNorm) get a factor drawn log-uniformly from ``[10, 50]``; the rest are log-normal
around 1 (``sigma`` 0.3). The post-LN range of a channel is its factor times its
current range, so the widest channels end at 10-100x the median range, as in the
papers. This is a labelled stress variant, never a pretrained model.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from igq_plugin.nn import post_norm_linears


@dataclass(frozen=True)
class OutlierProfile:
    """The distribution of the per-channel factors.

    Attributes:
        fraction: share of each LayerNorm's channels made outliers (at least one).
        low, high: the outliers' factors, log-uniform in ``[low, high]``.
        sigma: the other channels' factors are ``exp(sigma * N(0, 1))``.
        seed: seed of the draw.
    """

    fraction: float = 0.03
    low: float = 10.0
    high: float = 50.0
    sigma: float = 0.3
    seed: int = 0

    def __post_init__(self):
        if not 0 < self.fraction < 1:
            raise ValueError(f'fraction={self.fraction!r}: must be in (0, 1)')
        if not 1 <= self.low <= self.high:
            raise ValueError(f'low={self.low!r}, high={self.high!r}: need 1 <= low <= high')
        if self.sigma < 0:
            raise ValueError(f'sigma={self.sigma!r}: must be >= 0')

    def as_dict(self) -> dict:
        return asdict(self)


def channel_factors(channels: int, profile: OutlierProfile,
                    generator: torch.Generator) -> torch.Tensor:
    """``[C]`` positive factors of one LayerNorm (see :class:`OutlierProfile`)."""
    factors = torch.exp(profile.sigma * torch.randn(channels, generator=generator,
                                                    dtype=torch.float64))
    count = max(1, round(profile.fraction * channels))
    chosen = torch.randperm(channels, generator=generator)[:count]
    span = math.log(profile.high) - math.log(profile.low)
    factors[chosen] = torch.exp(math.log(profile.low)
                                + span * torch.rand(count, generator=generator,
                                                    dtype=torch.float64))
    return factors


def _projection_weight(module: nn.Module) -> torch.Tensor:
    """The weight ``[out, C]`` that takes the LayerNorm's output."""
    if isinstance(module, nn.MultiheadAttention):
        return module.in_proj_weight
    return module.weight


def add_channel_outliers(model: nn.Module, profile: OutlierProfile = OutlierProfile(),
                         prefix: str = 'backbone.') -> dict[str, torch.Tensor]:
    """Rescale every LayerNorm -> Linear pair under ``prefix``, in place (float model).

    Returns:
        ``{layernorm name: [C] factors}``.

    Raises:
        ValueError: the model has no such pair under ``prefix``.
    """
    pairs = {linear: norm for linear, norm in sorted(post_norm_linears(model).items())
             if linear.startswith(prefix)}
    if not pairs:
        raise ValueError(f'{type(model).__name__} has no LayerNorm -> Linear pair under '
                         f'{prefix!r}: nothing to rescale')
    generator = torch.Generator().manual_seed(profile.seed)
    applied = {}
    with torch.no_grad():
        for linear_name, norm_name in pairs.items():
            norm = model.get_submodule(norm_name)
            weight = _projection_weight(model.get_submodule(linear_name))
            factors = channel_factors(norm.weight.numel(), profile, generator)
            norm.weight.mul_(factors.to(norm.weight.dtype))
            norm.bias.mul_(factors.to(norm.bias.dtype))
            weight.div_(factors.to(weight.dtype))
            applied[norm_name] = factors.float()
    return applied


def post_norm_range_ratios(model: nn.Module, images: list[torch.Tensor], forward,
                           prefix: str = 'backbone.') -> dict[str, float]:
    """Widest over median channel range of every post-LayerNorm activation.

    Args:
        model: a float model.
        images: inputs for ``forward(model, image)``.
        forward: runs the model on one input.

    Returns:
        ``{layernorm name: max_c range_c / median_c range_c}`` over the inputs.
    """
    norms = {norm for linear, norm in post_norm_linears(model).items()
             if linear.startswith(prefix)}
    ranges, hooks = {}, []
    for name in norms:
        def record(module, args, out, name=name):
            flat = out.detach().reshape(-1, out.shape[-1]).float()
            low, high = flat.amin(0), flat.amax(0)
            if name in ranges:
                old_low, old_high = ranges[name]
                low, high = torch.minimum(low, old_low), torch.maximum(high, old_high)
            ranges[name] = (low, high)
        hooks.append(model.get_submodule(name).register_forward_hook(record))
    try:
        with torch.no_grad():
            for image in images:
                forward(model, image)
    finally:
        for hook in hooks:
            hook.remove()
    ratios = {}
    for name, (low, high) in sorted(ranges.items()):
        width = high - low
        ratios[name] = float(width.max() / width.median())
    return ratios


def write_variant_checkpoint(model: nn.Module, output: str, profile: OutlierProfile,
                             source: str) -> dict[str, torch.Tensor]:
    """Rescale a float model (weights loaded) and save it as a float32 checkpoint.

    float32, not the demo models' float16: rounding the rescaled weights to float16
    would change the function.

    Returns:
        The factors of :func:`add_channel_outliers`.
    """
    import os
    factors = add_channel_outliers(model, profile)
    state = {k: v.float() if v.is_floating_point() else v
             for k, v in model.state_dict().items()}
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    torch.save(dict(state_dict=state, meta=dict(pretrained_like=profile.as_dict(),
                                                source=source)), output)
    return factors
