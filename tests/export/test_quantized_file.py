"""The *.igq.safetensors file: export, reload without the float weights, refusals."""
import json
import struct

import pytest
import torch
from safetensors.torch import save_file

import igq_plugin
from igq_plugin import QuantConfig, export_quantized, load_quantized
from igq_plugin.export import file_sizes, read_header
from igq_plugin.nn import igq_quantizers, quantization_record

from tests.test_api import calibrated
from tests.toy_models import TinyViT, toy_images


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
    """A calibrated toy ViT (igq, allocated G per layer, W4/A4) and its file."""
    _, model, _ = calibrated('igq', groups=4)
    path = str(tmp_path_factory.mktemp('export') / 'tiny.igq.safetensors')
    export_quantized(model, path)
    return model, path


def test_reloaded_model_computes_what_the_exported_one_did(exported):
    model, path = exported
    fresh = TinyViT(seed=123).eval()  # other float weights: nothing may come from them
    load_quantized(fresh, path)
    images = toy_images(3, seed=7)
    with torch.no_grad():
        # the same fake-quant arithmetic on the same values: equal up to float32 rounding
        torch.testing.assert_close(fresh(images), model(images), rtol=1e-5, atol=1e-6)
    assert {n: int(q.groups) for n, q in igq_quantizers(fresh).items()} == \
        {n: int(q.groups) for n, q in igq_quantizers(model).items()}


def test_reexport_of_a_loaded_model_is_byte_identical(exported, tmp_path):
    _, path = exported
    fresh = load_quantized(TinyViT(seed=5).eval(), path)
    again = str(tmp_path / 'again.igq.safetensors')
    export_quantized(fresh, again)
    with open(path, 'rb') as a, open(again, 'rb') as b:
        assert a.read() == b.read()


def test_builder_gets_the_provenance_record(exported, tmp_path):
    model, _ = exported
    path = str(tmp_path / 'meta.igq.safetensors')
    export_quantized(model, path, meta={'arch': 'tiny', 'dim': 32})
    seen = []

    def build(meta):
        seen.append(meta)
        return TinyViT(dim=meta['dim']).eval()

    loaded = load_quantized(build, path)
    assert seen == [{'arch': 'tiny', 'dim': 32}]
    assert quantization_record(loaded).provenance == {'arch': 'tiny', 'dim': 32}


def test_header_records_bits_groups_and_method(exported):
    model, path = exported
    header = read_header(path)
    assert header['config']['method'] == 'igq' and header['config']['w_bits'] == 4
    groups = {n: r['groups'] for n, r in header['activations'].items() if r['type'] == 'igq'}
    assert groups == {n: int(q.groups) for n, q in igq_quantizers(model).items()}
    assert header['weights']['patch_embed.weight'] == 8  # the first layer: first_layer_bits
    assert header['weights']['blocks.0.fc1.weight'] == 4
    assert set(header['weights']) == {f'{n}.weight' for n, m in model.named_modules()
                                      if hasattr(m, 'weight_quantizer')}


def test_packed_weights_are_smaller_than_float16(tmp_path):
    model = TinyViT(dim=64).eval()
    from tests.test_api import forward  # noqa: F401
    _, model, _ = calibrated('igq-fixed', groups=4)
    path = str(tmp_path / 'w4.igq.safetensors')
    export_quantized(model, path)
    sizes = file_sizes(path, prefixes=('blocks.',))
    float16 = sum(p.numel() * 2 for n, p in model.named_parameters() if n.startswith('blocks.'))
    # 4-bit codes are a quarter of float16; per-channel scales, biases, norms add to it
    assert sizes['blocks.'] < 0.45 * float16


class TestRefusals:
    def test_truncated_file(self, exported, tmp_path):
        _, path = exported
        data = open(path, 'rb').read()
        cut = tmp_path / 'cut.igq.safetensors'
        cut.write_bytes(data[:len(data) // 2])
        with pytest.raises(ValueError, match='not a complete safetensors file'):
            load_quantized(TinyViT().eval(), str(cut))

    def test_flipped_byte_fails_the_hash(self, exported, tmp_path):
        _, path = exported
        data = bytearray(open(path, 'rb').read())
        data[-10] ^= 0xFF
        bad = tmp_path / 'flip.igq.safetensors'
        bad.write_bytes(bytes(data))
        model = TinyViT().eval()
        before = {k: v.clone() for k, v in model.state_dict().items()}
        with pytest.raises(ValueError, match='corrupt or was edited'):
            load_quantized(model, str(bad))
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())

    def test_foreign_safetensors(self, tmp_path):
        path = str(tmp_path / 'float.safetensors')
        save_file({k: v.contiguous() for k, v in TinyViT().state_dict().items()}, path)
        with pytest.raises(ValueError, match="without the 'igq' record"):
            load_quantized(TinyViT().eval(), path)

    @pytest.mark.parametrize('zip_format', [True, False])
    def test_float_checkpoint_where_a_quantized_one_is_expected(self, zip_format, tmp_path):
        path = str(tmp_path / 'float.pth')
        torch.save(TinyViT().state_dict(), path, _use_new_zipfile_serialization=zip_format)
        with pytest.raises(ValueError, match='PyTorch checkpoint'):
            load_quantized(TinyViT().eval(), path)

    def test_other_version(self, exported, tmp_path):
        _, path = exported
        data = open(path, 'rb').read()
        size = struct.unpack('<Q', data[:8])[0]
        header = json.loads(data[8:8 + size])
        record = json.loads(header['__metadata__']['igq'])
        record['version'] = 99
        header['__metadata__']['igq'] = json.dumps(record)
        text = json.dumps(header).encode()
        text += b' ' * (-len(text) % 8)
        bad = tmp_path / 'v99.igq.safetensors'
        bad.write_bytes(struct.pack('<Q', len(text)) + text + data[8 + size:])
        with pytest.raises(ValueError, match='version 99'):
            load_quantized(TinyViT().eval(), str(bad))

    def test_other_architecture_is_named(self, exported):
        _, path = exported
        with pytest.raises(ValueError, match='another architecture.*blocks.2'):
            load_quantized(TinyViT(depth=3).eval(), path)

    def test_other_settings_are_named(self, exported):
        _, path = exported
        model = TinyViT().eval()
        igq_plugin.quantize_model(model, QuantConfig(method='igq', a_bits=6, groups=4))
        with pytest.raises(ValueError, match='a_bits: file 4, model 6'):
            load_quantized(model, path)

    def test_float_model_cannot_be_exported(self, tmp_path):
        with pytest.raises(TypeError, match='float model'):
            export_quantized(TinyViT().eval(), str(tmp_path / 'f.igq.safetensors'))

    def test_uncalibrated_model_cannot_be_exported(self, tmp_path):
        model = TinyViT().eval()
        igq_plugin.quantize_model(model, QuantConfig(method='igq-fixed', groups=4))
        with pytest.raises(ValueError, match='uncalibrated'):
            export_quantized(model, str(tmp_path / 'u.igq.safetensors'))

    @pytest.mark.parametrize('method', ['repq', 'upper-bound'])
    def test_method_that_cannot_be_exported(self, method, tmp_path):
        _, model, _ = calibrated(method, groups=4)
        target = tmp_path / 'm.igq.safetensors'
        with pytest.raises(ValueError, match=f"method='{method}' cannot be exported"):
            export_quantized(model, str(target))
        assert not target.exists()

    def test_wrong_suffix(self, exported, tmp_path):
        model, _ = exported
        with pytest.raises(ValueError, match='must end with'):
            export_quantized(model, str(tmp_path / 'model.safetensors'))


@pytest.mark.parametrize('method', ['igq-fixed', 'per-tensor', 'static-group'])
def test_every_exportable_method_round_trips(method, tmp_path):
    _, model, _ = calibrated(method, groups=4)
    path = str(tmp_path / f'{method}.igq.safetensors')
    export_quantized(model, path)
    fresh = load_quantized(TinyViT(seed=9).eval(), path)
    images = toy_images(2, seed=3)
    with torch.no_grad():
        torch.testing.assert_close(fresh(images), model(images), rtol=1e-5, atol=1e-6)


def test_content_hash_covers_every_dtype_and_shape():
    from igq_plugin.export.quantized_file import content_hash
    tensors = {'scalar': torch.tensor(1.5), 'empty': torch.zeros(0, 3), 'int': torch.arange(4),
               'half': torch.ones(2, dtype=torch.float16)}
    base = content_hash(tensors)
    assert content_hash(dict(tensors, scalar=torch.tensor(2.5))) != base
    assert content_hash(dict(tensors, half=torch.ones(2))) != base  # same values, other dtype
    assert content_hash(dict(tensors, empty=torch.zeros(3, 0))) != base
