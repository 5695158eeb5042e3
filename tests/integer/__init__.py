"""Tests of the integer executor; helpers shared by its test modules.

Per-layer tolerance: ``max|a - b| / max|b|`` over one layer's output, at most 1e-5.
Both paths sum the same integer codes; the fake-quant layer rounds every product and
partial sum of its float32 dot products (error growing like ``sqrt(K) * 2^-24`` of
the terms' size for the BLAS's blocked sums, ~3e-6 at Swin-T's largest ``K = 3072``),
the integer layer only its ``G + 2`` rescales and adds. 1e-5 leaves a margin of 3 over
that, and is far below one quantization step of the next layer (``2^-4`` of its range).
"""
import torch
import torch.nn.functional as F

from igq_plugin.nn import QuantConv2d, QuantLinear
from igq_plugin.nn.layers import fill_fold_padding

RELATIVE_TOLERANCE = 1e-5


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """``max|a - b| / max|b|`` (in float64)."""
    actual, expected = actual.double(), expected.double()
    return ((actual - expected).abs().max() / expected.abs().max()).item()


def capture_layers(model, run):
    """``{name: [(input, output, num_instances)]}`` of every QuantLinear / QuantConv2d
    while ``run()`` executes ``model``. The output is taken before a fused qkv Linear's
    Q/K/V output quantizer, which both paths share as fake-quant (a float rounding
    difference may move a Q/K/V code by one step there)."""
    captured, handles = {}, []
    for name, module in model.named_modules():
        if type(module) in (QuantLinear, QuantConv2d):
            def hook(mod, args, output, name=name):
                if getattr(mod, 'output_quantizer', None) is not None:
                    x = fill_fold_padding(args[0], getattr(mod, 'fold_padding', None))
                    output = F.linear(mod.input_quantizer(x),
                                      mod.weight_quantizer(mod.weight), mod.bias)
                captured.setdefault(name, []).append(
                    (args[0].detach().clone(), output.detach().clone(),
                     mod.input_quantizer.num_instances))
            handles.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            run()
    finally:
        for handle in handles:
            handle.remove()
    return captured


def replay_errors(model, captured) -> dict[str, float]:
    """Largest relative error of every converted layer of ``model`` on the captured
    inputs, against the captured fake-quant outputs."""
    errors = {}
    with torch.no_grad():
        for name, calls in captured.items():
            layer = model.get_submodule(name)
            output_quantizer = layer._modules.pop('output_quantizer', None)
            worst = 0.0
            for x, expected, instances in calls:
                layer.input_quantizer.num_instances = instances
                worst = max(worst, relative_error(layer(x), expected))
            if output_quantizer is not None:
                layer.output_quantizer = output_quantizer
            errors[name] = worst
    return errors
