"""``igq-reparam`` deployed: the quantized-model file, the integer executor and ONNX.

The model folds five post-LayerNorm inputs, one of them into a patch merging's
bias-free ``reduction`` (the fold adds its bias). Outputs are compared with float32
tolerances (the same arithmetic in another summation order), codes exactly.
"""
import copy
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from igq_plugin import export_quantized, load_quantized
from igq_plugin.export import read_header
from igq_plugin.export.quantized_file import METADATA_KEY, content_hash
from igq_plugin.integer import IntegerLinear, to_integer_model
from igq_plugin.nn import igq_quantizers, quantization_record

from tests.integer import RELATIVE_TOLERANCE, capture_layers, relative_error, replay_errors
from tests.nn.test_igq_reparam import calibrated
from tests.nn.test_reparam import PAIRS, Net, inputs


def other_float_weights() -> Net:
    """The architecture with other float weights: nothing may come from them."""
    model = Net()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=torch.Generator().manual_seed(3)))
    return model


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
    model = calibrated()
    path = str(tmp_path_factory.mktemp('reparam') / 'net.igq.safetensors')
    export_quantized(model, path)
    return model, path


def test_file_reloads_the_folded_model_without_the_float_weights(exported):
    model, path = exported
    header = read_header(path)
    assert header['fold_biases'] == ['blocks.1.reduction.bias']
    folded = {n for n, r in header['activations'].items() if r.get('fold')}
    assert folded == {f'{linear}.input_quantizer' for linear in PAIRS}
    fresh = load_quantized(other_float_weights(), path)
    x = inputs()
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), model(x), rtol=1e-5, atol=1e-6)
    record = quantization_record(fresh)
    assert record.fold_biases == ['blocks.1.reduction.bias'] and not record.fold_originals
    for linear in PAIRS:
        quantizer = fresh.get_submodule(linear).input_quantizer
        assert bool(quantizer.folded)
        torch.testing.assert_close(quantizer.fold_shift,
                                   model.get_submodule(linear).input_quantizer.fold_shift)
        torch.testing.assert_close(fresh.get_submodule(linear).fold_padding, -quantizer.fold_shift)
    assert {n: int(q.groups) for n, q in igq_quantizers(fresh).items()} == \
        {n: int(q.groups) for n, q in igq_quantizers(model).items()}


def test_reexport_of_the_loaded_model_is_byte_identical(exported, tmp_path):
    _, path = exported
    again = str(tmp_path / 'again.igq.safetensors')
    export_quantized(load_quantized(Net(), path), again)
    with open(path, 'rb') as a, open(again, 'rb') as b:
        assert a.read() == b.read()


def _edited(path, tmp_path, edit):
    """A copy of the file with ``edit(tensors, header)`` applied (hash recomputed)."""
    tensors, header = load_file(path), read_header(path)
    edit(tensors, header)
    header['content_sha256'] = content_hash(tensors)
    target = str(tmp_path / 'edited.igq.safetensors')
    save_file(tensors, target, metadata={METADATA_KEY: json.dumps(header, sort_keys=True)})
    return target


@pytest.mark.parametrize('edit, message', [
    (lambda t, h: t.__setitem__('blocks.0.attn.qkv.input_quantizer.fold_ratio',
                                -t['blocks.0.attn.qkv.input_quantizer.fold_ratio']),
     'fold_ratio must be finite and positive'),
    (lambda t, h: h['activations']['blocks.0.attn.qkv.input_quantizer'].pop('fold'),
     "differently.*'fold'"),
    (lambda t, h: h.__setitem__('fold_biases', ['head.bias']),
     "fold bias 'head.bias' is not the bias of a folded projection"),
])
def test_edited_fold_entries_are_refused_before_the_model_changes(exported, tmp_path, edit,
                                                                   message):
    _, path = exported
    target = _edited(path, tmp_path, edit)
    model = other_float_weights()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match=message):
        load_quantized(model, target)
    after = {k: v for k, v in model.state_dict().items() if k in before}
    assert all(torch.equal(after[k], before[k]) for k in before)


def test_integer_executor_agrees_with_fake_quant_on_every_layer(exported):
    model = copy.deepcopy(exported[0])
    x = inputs()
    captured = capture_layers(model, lambda: model(x))
    to_integer_model(model)
    errors = replay_errors(model, captured)
    assert len(errors) == sum(1 for _ in captured) and \
        max(errors.values()) <= RELATIVE_TOLERANCE, errors
    assert model.blocks[1].reduction.fold_padding is not None


def test_integer_layer_reads_an_all_zero_token_as_padding(exported):
    """Swin pads windows after the folded LayerNorm: a zero token is the fold of 0."""
    layer = copy.deepcopy(exported[0].blocks[0].mlp.fc1)
    layer.input_quantizer.num_instances = None  # every leading index one image
    x = torch.randn(2, 6, layer.in_features, generator=torch.Generator().manual_seed(4))
    x[:, -2:] = 0  # padded tokens
    as_fold_of_zero = x.clone()
    as_fold_of_zero[:, -2:] = layer.fold_padding
    with torch.no_grad():
        expected = layer(x)
        torch.testing.assert_close(expected, layer(as_fold_of_zero), rtol=0, atol=0)
        integer = IntegerLinear.from_quantized(layer)(x)
    assert relative_error(integer, expected) <= RELATIVE_TOLERANCE


def test_onnx_graph_matches_pytorch_codes_and_outputs(exported, tmp_path):
    pytest.importorskip('onnxruntime')
    from igq_plugin.export.onnx_checks import compare_codes
    from igq_plugin.export.onnx_graph import export_onnx, run_onnx
    model, _ = exported
    x = inputs()
    export = export_onnx(model, (x,), str(tmp_path / 'net.onnx'), expose_codes=True,
                         dynamo=False)
    outputs = run_onnx(export, (x,))
    comparisons = compare_codes(model, export, outputs)
    assert sum(c.items for c in comparisons) > 0  # groups compared where G > 1
    for c in comparisons:
        assert c.code_mismatches == 0 and c.group_mismatches == 0, c
    with torch.no_grad():
        assert relative_error(torch.as_tensor(outputs['output_0']), model(x)) <= 1e-5
