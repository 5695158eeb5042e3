"""The core API: quantize_model + calibrate_model on a plain PyTorch model."""
import copy
import io

import pytest
import torch

import igq_plugin
from igq_plugin import (ClassifierPredictor, QuantConfig, QuantState, calibrate_model, float_run,
                        quantization_record, quantize_model)
from igq_plugin.nn import activation_quantizers, igq_quantizers
from igq_plugin.quant import QuantMode, quant_mode
from igq_plugin.quantizers import ALLOCATING_METHODS, FOLDING_METHODS, METHODS

from tests.toy_models import TinyViT, toy_images


def forward(model, batch):
    return model(batch)


def converted(method='igq', groups=4, **kwargs):
    model = TinyViT().eval()
    reference = copy.deepcopy(model)
    quantize_model(model, QuantConfig(method=method, groups=groups, **kwargs))
    return reference, model


def calibrated(method='igq', groups=4, images=None, **kwargs):
    reference, model = converted(method, groups, **kwargs)
    batches = list((toy_images(2) if images is None else images).split(1))
    predictor = ClassifierPredictor(model, batches, forward)
    report = calibrate_model(model, batches, forward, predictor=predictor)
    return reference, model, report


def test_quantize_model_converts_and_records():
    _, model = converted()
    record = quantization_record(model)
    assert record.state is QuantState.UNCALIBRATED
    assert record.first_layers == ('patch_embed',)
    assert model.patch_embed.weight_quantizer.bits == 8
    assert 'blocks.0.attn.softmax' in record.layers
    with pytest.raises(ValueError, match='already quantized'):
        quantize_model(model, QuantConfig())


def test_uncalibrated_model_refuses_to_run_but_float_run_is_exact():
    reference, model = converted()
    images = toy_images(2)
    with pytest.raises(RuntimeError, match='not calibrated'):
        model(images)
    with float_run(model), torch.no_grad():
        assert torch.equal(model(images), reference(images))


@pytest.mark.parametrize('method', METHODS)
def test_calibrate_every_method(method):
    reference, model, report = calibrated(method)
    assert quantization_record(model).state is QuantState.READY
    assert report.gbops > 0 and report.macs > 0
    images = toy_images(3, seed=1)
    with torch.no_grad():
        quantized = model(images)
        with float_run(model):
            if method in FOLDING_METHODS:  # the fold rescales float weights: float rounding
                torch.testing.assert_close(model(images), reference(images))
            else:
                assert torch.equal(model(images), reference(images))
    assert not torch.equal(quantized, reference(images))
    assert (report.allocation is not None) == (method in ALLOCATING_METHODS)


def test_ready_model_refuses_a_partly_float_forward():
    _, model, _ = calibrated('igq-fixed')
    model.blocks[0].fc1.input_quantizer.mode = QuantMode.FLOAT
    with pytest.raises(RuntimeError, match='partly float'):
        model(toy_images(1))


def test_igq_without_predictor_is_an_error_before_any_forward():
    _, model = converted('igq')
    calls = []
    with pytest.raises(ValueError, match='predictor'):
        calibrate_model(model, [toy_images(1)], lambda m, b: calls.append(b))
    assert not calls and quantization_record(model).state is QuantState.UNCALIBRATED


def test_empty_calibration_set_is_an_error():
    _, model = converted('per-tensor')
    with pytest.raises(ValueError, match='empty calibration'):
        calibrate_model(model, [], forward)


def test_nan_activations_are_named():
    _, model = converted('per-tensor')
    images = toy_images(1)
    images[0, 0, 0, 0] = float('nan')
    with pytest.raises(ValueError, match='patch_embed.input_quantizer.*NaN'):
        calibrate_model(model, [images], forward)


def test_search_measures_q_k_and_v_each():
    """Each Q/K/V operand is quantized alone during the search, so each has a
    sensitivity (before the fix K and V were never quantized: sensitivity 0)."""
    _, model, report = calibrated('igq', groups=1, candidates=(1, 2))
    rows = {row['layer']: row['sensitivity'] for row in report.rows}
    # (Q of the last block moves the logits by ~1e-3: its KL is below float precision)
    for name in ['blocks.0.attn.qkv.output_quantizer.q'] + [
            f'blocks.{block}.attn.qkv.output_quantizer.{operand}'
            for block in range(2) for operand in 'kv']:
        assert rows[name] is not None and rows[name] > 0, name


def test_quantizing_k_alone_changes_the_output():
    _, model, _ = calibrated('igq-fixed')
    images = toy_images(2, seed=3)
    operand = model.blocks[0].attn.qkv.output_quantizer.k
    with torch.no_grad(), quant_mode(model, QuantMode.FLOAT), float_run(model):
        reference = model(images)
        operand.mode = QuantMode.QUANTIZED
        assert not torch.equal(model(images), reference)


def test_progress_bar_ends_its_line():
    class Bar:
        def __init__(self, steps):
            self.file = io.StringIO()
            Bar.last = self

        def update(self):
            self.file.write('#')

    reference, model = converted('igq', groups=2, candidates=(1, 2))
    batches = [toy_images(1)]
    calibrate_model(model, batches, forward, predictor=ClassifierPredictor(model, batches, forward),
                    progress=Bar)
    assert Bar.last.file.getvalue().endswith('#\n')


def test_allocation_stays_within_budget_and_sets_groups():
    _, model, report = calibrated('igq', groups=4)
    assert report.allocated_gbops <= report.budget_gbops + 1e-12
    layers = igq_quantizers(model)
    assert {name: int(q.groups) for name, q in layers.items()} == report.allocation


class TestConfigErrors:
    def test_groups_not_among_candidates(self):
        with pytest.raises(ValueError, match=r'groups=10 is not one of candidates'):
            QuantConfig(groups=10)

    def test_impossible_groups_name_the_layer_and_its_items(self):
        with pytest.raises(ValueError, match=r"fc1\.input_quantizer.*groups=8 is not allowed "
                                             r"for 4 channels"):
            igq_plugin.quantizers.StaticGroupQuantizer(4, channels=4, groups=8,
                                                  name='fc1.input_quantizer')

    def test_softmax_candidates_named_as_rows(self):
        quantizer = igq_plugin.quantizers.IGQQuantizer(4, kind='softmax', groups=2, candidates=(1, 2),
                                                  name='attn.softmax.quantizer')
        assert quantizer.item_name == 'softmax rows'
        with quant_mode(quantizer, 'calibrate'):
            quantizer(torch.rand(1, 1, 1, 5).softmax(-1))  # one row
        with pytest.raises(ValueError, match=r'attn.softmax.quantizer.*1 softmax rows'):
            quantizer.finalize()

    def test_config_must_be_a_quant_config(self):
        with pytest.raises(TypeError, match='QuantConfig'):
            quantize_model(TinyViT(), dict(method='igq'))

    def test_unknown_part(self):
        with pytest.raises(ValueError, match="no submodule 'neck'"):
            quantize_model(TinyViT(), QuantConfig(), include=('neck',))


def test_every_quantizer_is_named():
    _, model = converted()
    for name, quantizer in activation_quantizers(model).items():
        assert quantizer.layer_name == name


def test_calibration_runs_the_model_in_eval_mode_and_restores_the_flag():
    """A runner hands the model over in training mode: dropout must not run."""
    def build():
        model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Dropout(0.5),
                                    torch.nn.Linear(8, 3))
        torch.manual_seed(0)
        for p in model.parameters():
            torch.nn.init.normal_(p)
        quantize_model(model, QuantConfig(method='per-tensor'))
        return model

    batches = [torch.randn(4, 8)]
    trained, evaluated = build(), build()
    trained.train()
    evaluated.eval()
    calibrate_model(trained, batches, forward)
    calibrate_model(evaluated, batches, forward)
    assert trained.training and not evaluated.training
    assert torch.equal(trained[2].input_quantizer.upper, evaluated[2].input_quantizer.upper)
