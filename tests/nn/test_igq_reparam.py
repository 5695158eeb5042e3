"""``igq-reparam``: RepQ-ViT's fold of the post-LayerNorm inputs composed with IGQ's groups."""
import pytest
import torch

from igq_plugin import ClassifierPredictor, QuantConfig, calibrate_model, float_run, quantize_model
from igq_plugin.nn import (QuantState, export_state, import_state, igq_quantizers,
                           set_quant_state)
from igq_plugin.quant import QuantMode, set_mode
from igq_plugin.quantizers import IGQQuantizer
from igq_plugin.quantizers.igq import static_fold

from .test_reparam import PAIRS, Net, forward, inputs


def calibration_batches():
    generator = torch.Generator().manual_seed(1)
    return [torch.randn(2, 24, 6, generator=generator) for _ in range(2)]


def calibrated(method='igq-reparam', model=None):
    model = Net() if model is None else model
    quantize_model(model, QuantConfig(method=method, w_bits=4, a_bits=4, groups=4))
    batches = calibration_batches()
    calibrate_model(model, batches, forward, predictor=ClassifierPredictor(model, batches, forward))
    return model


def test_static_fold_maps_every_channel_typical_range_onto_one():
    generator = torch.Generator().manual_seed(0)
    scale = torch.tensor([1.0, 40.0, 0.5, 3.0, 0.0])  # channel 4 is constant
    offset = torch.tensor([0.0, -5.0, 2.0, 1.0, 0.7])
    lower = -torch.rand(50, 5, generator=generator) * scale + offset
    upper = torch.rand(50, 5, generator=generator) * scale + offset
    ratio, shift = static_fold(lower, upper)
    folded_lower, folded_upper = lower / ratio - shift, upper / ratio - shift
    width = folded_upper.mean(0) - folded_lower.mean(0)
    live = slice(0, 4)
    torch.testing.assert_close(width[live], width[live].mean().expand(4))
    typical_lower = folded_lower.mean(0)[live]
    torch.testing.assert_close(typical_lower, typical_lower.mean().expand(4))
    assert bool((ratio > 0).all()) and bool(torch.isfinite(shift).all())
    assert ratio[1] > 10 * ratio[0]  # the wide channel is divided down


def test_folds_every_post_norm_input_and_keeps_the_float_function():
    reference, model = Net(), calibrated()
    assert model.igq_quantization.folds == PAIRS
    x = inputs()
    with float_run(model):
        folded_float = model(x)
    torch.testing.assert_close(folded_float, reference(x), rtol=1e-5, atol=1e-5)
    assert not torch.equal(model.blocks[0].norm1.weight, reference.blocks[0].norm1.weight)
    for linear in PAIRS:
        quantizer = model.get_submodule(linear).input_quantizer
        assert isinstance(quantizer, IGQQuantizer) and quantizer.post_norm
        assert bool(quantizer.folded)
    others = [q for n, q in igq_quantizers(model).items()
              if n.rpartition('.')[0] not in PAIRS]
    assert others and not any(q.post_norm for q in others)
    # plain igq folds nothing
    plain = calibrated('igq')
    assert plain.igq_quantization.folds == {}
    assert not any(q.post_norm for q in igq_quantizers(plain).values())


def test_the_groups_cover_the_folded_inputs_the_weights_receive():
    model = calibrated()
    quantizer = model.blocks[0].mlp.fc1.input_quantizer
    seen = []
    handle = model.blocks[0].mlp.fc1.register_forward_pre_hook(lambda m, a: seen.append(a[0]))
    with float_run(model), torch.no_grad():
        for batch in calibration_batches():
            model(batch)
    handle.remove()
    folded = torch.cat(seen).reshape(-1, quantizer.channels)
    row = quantizer.candidates.index(1)  # G=1 with 'envelope' bounds: min / max of the inputs
    torch.testing.assert_close(quantizer.group_lower[row, 0], folded.min(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(quantizer.group_upper[row, 0], folded.max(), rtol=1e-5, atol=1e-5)
    # the fold evened out the channels: the widest typical range is within a few times the
    # narrowest (before the fold, channel 1's LayerNorm gain is 9 against at most 3)
    width = folded.amax(0) - folded.amin(0)
    assert width.max() / width.min() < 4


def test_state_reloads_into_a_float_model():
    model = calibrated()
    x = inputs()
    expected = model(x)
    fresh = Net()
    quantize_model(fresh, QuantConfig(method='igq-reparam', w_bits=4, a_bits=4, groups=4))
    import_state(fresh, export_state(model))
    set_quant_state(fresh, QuantState.READY)
    set_mode(fresh, QuantMode.QUANTIZED)
    torch.testing.assert_close(fresh(x), expected)  # float32 tolerance


def test_bad_settings_are_refused_by_name():
    with pytest.raises(ValueError, match="bounds='mse' is not supported with method='igq-reparam'"):
        QuantConfig(method='igq-reparam', bounds='mse')
    with pytest.raises(ValueError, match='needs kind'):
        IGQQuantizer(4, kind='softmax', post_norm=True)

