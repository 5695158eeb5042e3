"""ONNX export of calibrated models: standard ops only, the PyTorch quantizers' codes.

Every export below is checked by ``onnx.checker.check_model(full_check=True)`` inside
``export_onnx``. Codes and group assignments are compared exactly on the same input
(each quantizer's input as onnxruntime computed it); model outputs with a tolerance,
since the two runtimes sum their matmuls in different orders.
"""
import copy

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, numpy_helper

from igq_plugin import ClassifierPredictor, QuantConfig, calibrate_model, quantize_model
from igq_plugin.export.onnx_checks import compare_codes
from igq_plugin.export.onnx_graph import (ONNX_EXPORTABLE_METHODS, check_exportable,
                                          export_float_onnx, export_onnx, relative_error,
                                          run_onnx)
from igq_plugin.export.onnx_weights import quantized_weights
from igq_plugin.nn import activation_quantizers

from tests.tool_loader import load_tool
from tests.toy_models import TinyViT, toy_images

# What the issue allows: no custom op, no domain other than the default one.
STANDARD_OPS = {
    'Conv', 'MatMul', 'Gemm', 'Add', 'Sub', 'Mul', 'Div', 'Round', 'Clip', 'Max', 'Min',
    'ReduceMin', 'ReduceMax', 'ReduceMean', 'ArgMin', 'ArgMax', 'Gather', 'Where', 'Less',
    'Greater', 'LessOrEqual', 'GreaterOrEqual', 'Equal', 'DequantizeLinear', 'Reshape',
    'Transpose', 'Unsqueeze', 'Squeeze', 'Split', 'Concat', 'Slice', 'Softmax', 'Gelu',
    'LayerNormalization', 'Identity', 'Expand', 'Shape', 'Constant', 'Cast', 'Erf', 'Pow',
    'Sqrt', 'Neg', 'Abs', 'Relu', 'Flatten', 'Pad', 'Resize', 'ScatterND', 'Range', 'Tile',
}
# Outputs: float32 GEMMs of K <= 128 terms in another summation order, through two
# blocks; an error of a few float32 ulps of the largest output, far under 1e-5.
OUTPUT_RTOL = 1e-5


def forward(model, batch):
    return model(batch)


def calibrated(method='igq-fixed', **kwargs):
    model = TinyViT().eval()
    quantize_model(model, QuantConfig(method=method, groups=4, **kwargs))
    batches = list(toy_images(2).split(1))
    predictor = ClassifierPredictor(model, batches, forward) if method == 'igq' else None
    calibrate_model(model, batches, forward, predictor=predictor)
    return model


@pytest.fixture(scope='module')
def igq_export(tmp_path_factory):
    """igq (allocated G per layer, 'cover' rule), exported with every code exposed."""
    model = calibrated('igq', candidates=(1, 2, 4, 8))
    images = toy_images(2, seed=5)
    path = str(tmp_path_factory.mktemp('onnx') / 'tiny_vit_igq.onnx')
    export = export_onnx(model, (images,), path, expose_codes=True)
    return model, images, export, run_onnx(export, (images,))


def test_only_standard_opset_21_operators(igq_export):
    _, _, export, _ = igq_export
    graph = onnx.load(export.path)
    assert [(o.domain, o.version) for o in graph.opset_import if o.domain in ('', 'ai.onnx')] \
        == [('', 21)]
    ops = {node.op_type for node in graph.graph.node}
    assert all(node.domain in ('', 'ai.onnx') for node in graph.graph.node)
    assert ops <= STANDARD_OPS, ops - STANDARD_OPS
    assert {'ReduceMin', 'ReduceMax', 'ArgMin', 'Gather', 'Round', 'Clip',
            'DequantizeLinear'} <= ops


def test_codes_and_groups_equal_pytorch_on_every_quantizer(igq_export):
    model, _, export, outputs = igq_export
    comparisons = compare_codes(model, export, outputs)
    assert {c.name for c in comparisons} == set(activation_quantizers(model))
    for c in comparisons:
        assert c.code_mismatches == 0 and c.group_mismatches == 0, c
    grouped = [c for c in comparisons if c.items]
    assert grouped and all(c.items > 0 for c in grouped)
    # the assignment is live: the exported groups are not all the same
    groups = [outputs[k] for k, (_, kind) in export.recorded.items() if kind == 'groups']
    assert any(len(np.unique(g)) > 1 for g in groups)


def test_outputs_match_pytorch_fake_quant(igq_export):
    model, images, export, outputs = igq_export
    with torch.no_grad():
        expected = model(images)
    assert relative_error(outputs['output_0'], expected) <= OUTPUT_RTOL
    # two threads sum in another order: still within the tolerance
    two = run_onnx(export, (images,), threads=2)
    assert relative_error(two['output_0'], expected) <= OUTPUT_RTOL


def test_weights_are_integer_codes_with_per_channel_dequantize(igq_export):
    model, _, export, _ = igq_export
    graph = onnx.load(export.path)
    initializers = {t.name: t for t in graph.graph.initializer}
    weights = quantized_weights(model)
    assert set(export.weights) == set(weights)
    dequantize = {n.output[0]: n for n in graph.graph.node if n.op_type == 'DequantizeLinear'}
    for name, (tensor, axis) in export.weights.items():
        node = dequantize[tensor]
        codes, scale, zero = (initializers[i] for i in node.input)
        expected_type = TensorProto.UINT4 if weights[name].bits <= 4 else TensorProto.UINT8
        assert codes.data_type == zero.data_type == expected_type
        assert tuple(scale.dims) == (weights[name].codes.shape[0],)
        expected = weights[name].codes.numpy()
        np.testing.assert_array_equal(numpy_helper.to_array(codes),
                                      expected if axis == 0 else expected.T)
        np.testing.assert_array_equal(numpy_helper.to_array(zero),
                                      weights[name].zero_point.numpy())
        assert not any(t.data_type == TensorProto.FLOAT and t.name == name
                       for t in graph.graph.initializer)
    assert weights['patch_embed.weight'].bits == 8 and weights['blocks.0.fc1.weight'].bits == 4


@pytest.mark.parametrize('method, options', [
    ('per-tensor', {}),
    ('static-group', {}),
    ('igq-fixed', dict(assignment='nearest')),
    ('igq-fixed', dict(w_bits=6, a_bits=6)),
])
def test_other_methods_and_rules_match_pytorch(tmp_path, method, options):
    """The rules live in the export modules, whichever exporter traces them: the
    TorchScript exporter takes 0.5 s here, the dynamo one 5 s."""
    model = calibrated(method, **options)
    images = toy_images(3, seed=7)
    export = export_onnx(model, (images,), str(tmp_path / 'model.onnx'), expose_codes=True,
                         dynamo=False)
    outputs = run_onnx(export, (images,))
    for c in compare_codes(model, export, outputs):
        assert c.code_mismatches == 0 and c.group_mismatches == 0, c
    with torch.no_grad():
        assert relative_error(outputs['output_0'], model(images)) <= OUTPUT_RTOL


def test_torchscript_exporter_gives_the_same_graph_rule(tmp_path):
    model = calibrated('igq-fixed')
    images = toy_images(2, seed=9)
    export = export_onnx(model, (images,), str(tmp_path / 'ts.onnx'), dynamo=False,
                         expose_codes=True)
    outputs = run_onnx(export, (images,))
    assert all(c.code_mismatches == 0 and c.group_mismatches == 0
               for c in compare_codes(model, export, outputs))
    with torch.no_grad():
        assert relative_error(outputs['output_0'], model(images)) <= OUTPUT_RTOL


def test_float_graph_of_a_converted_model_is_the_float_model(tmp_path):
    reference = TinyViT().eval()
    model = calibrated('igq-fixed')
    images = toy_images(2, seed=3)
    export = export_float_onnx(model, (images,), str(tmp_path / 'float.onnx'))
    graph = onnx.load(export.path)
    assert not {'DequantizeLinear', 'ArgMin', 'Round'} & {n.op_type for n in graph.graph.node}
    with torch.no_grad():
        expected = reference(images)
    assert relative_error(run_onnx(export, (images,))['output_0'], expected) <= OUTPUT_RTOL


def test_refuses_float_uncalibrated_and_unexportable_models(tmp_path):
    path = tmp_path / 'refused.onnx'
    images = toy_images(1)
    with pytest.raises(TypeError, match='float model'):
        export_onnx(TinyViT().eval(), (images,), str(path))
    uncalibrated = TinyViT().eval()
    quantize_model(uncalibrated, QuantConfig(method='igq-fixed', groups=4))
    with pytest.raises(ValueError, match='uncalibrated, not calibrated'):
        export_onnx(uncalibrated, (images,), str(path))
    for method in ('upper-bound', 'repq'):
        model = calibrated(method)
        with pytest.raises(ValueError, match=f"method='{method}' cannot be exported.*"
                                             f"exportable are"):
            export_onnx(model, (images,), str(path))
    assert not path.exists()
    assert set(ONNX_EXPORTABLE_METHODS) == {'igq', 'igq-reparam', 'igq-fixed', 'per-tensor',
                                           'static-group'}


def test_check_exportable_names_an_uncalibrated_quantizer():
    model = calibrated('igq-fixed')
    broken = copy.deepcopy(model)
    broken.blocks[1].fc2.input_quantizer.calibrated.fill_(False)
    assert check_exportable(model) == 'igq-fixed'
    with pytest.raises(ValueError, match='blocks.1.fc2.input_quantizer is not calibrated'):
        check_exportable(broken)


def test_timm_vit_through_the_core_api(tmp_path):
    timm = pytest.importorskip('timm')
    torch.manual_seed(0)
    model = timm.create_model('vit_tiny_patch16_224', pretrained=False, num_classes=10,
                              img_size=32, depth=1).eval()
    quantize_model(model, QuantConfig(method='igq-fixed', groups=4))
    gen = torch.Generator().manual_seed(0)
    calibrate_model(model, list((torch.randn(2, 3, 32, 32, generator=gen) * 1.5).split(1)),
                    forward)
    images = torch.randn(2, 3, 32, 32, generator=gen) * 1.5
    export = export_onnx(model, (images,), str(tmp_path / 'vit.onnx'), expose_codes=True)
    outputs = run_onnx(export, (images,))
    comparisons = compare_codes(model, export, outputs)
    # timm's attention is fused unless a quantizer is active: the export modules are
    assert {c.name for c in comparisons} == set(activation_quantizers(model))
    assert any('softmax' in c.name for c in comparisons)
    assert all(c.code_mismatches == 0 and c.group_mismatches == 0 for c in comparisons)
    with torch.no_grad():
        assert relative_error(outputs['output_0'], model(images)) <= OUTPUT_RTOL


def test_export_tool_offers_every_exportable_method():
    assert load_tool('export_onnx').METHODS == ONNX_EXPORTABLE_METHODS
