"""tools/classify_imagenet.py end to end on a tiny generated ImageNet-format folder."""
import json

import pytest
import torch

from tests.tool_loader import load_tool as load_named_tool

timm = pytest.importorskip('timm')
# timm architectures at a size the CPU evaluates in seconds
MODEL_ARGS = ['num_classes=3', 'img_size=32', 'depth=2']


def load_tool():
    return load_named_tool('classify_imagenet')


def make_folder(root, classes=3, train=4, val=2, size=40):
    """``root/{train,val}/<class>/*.jpg``: per class a colour and a brightness."""
    from PIL import Image
    gen = torch.Generator().manual_seed(0)
    for split, count in (('train', train), ('val', val)):
        for label in range(classes):
            folder = root / split / f'n{label:08d}'
            folder.mkdir(parents=True)
            for index in range(count):
                pixels = torch.rand(size, size, 3, generator=gen) * 80
                pixels[..., label] += 120 + 40 * torch.rand((), generator=gen)
                Image.fromarray(pixels.clamp(0, 255).to(torch.uint8).numpy()).save(
                    folder / f'{index}.jpg')


@pytest.mark.parametrize('name', ['vit_tiny_patch16_224', 'deit_tiny_patch16_224'])
def test_float_and_quantized_top1(tmp_path, name):
    make_folder(tmp_path / 'data')
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=3, img_size=32, depth=2)
    checkpoint = tmp_path / 'float.pth'
    torch.save(model.state_dict(), checkpoint)
    out = tmp_path / 'out'
    tool = load_tool()
    assert tool.main(['--model', name, '--checkpoint', str(checkpoint), '--data',
                      str(tmp_path / 'data'), '--out', str(out), '--methods', 'per-tensor',
                      'igq', '--bits', '4', '--g-avg', '4', '--calib-images', '4',
                      '--model-args', *MODEL_ARGS]) == 0
    records = json.load(open(out / 'results.json'))
    assert [r['method'] for r in records] == ['float', 'per-tensor', 'igq']
    for record in records:
        assert set(record) == set(tool.COLUMNS)
        assert 0 <= record['top1'] <= record['top5'] <= 100
    assert records[1]['gbops'] > 0 and records[2]['gbops'] > 0
    assert (out / 'results.md').read_text().count('\n| ') == 4  # header + 3 rows


def test_bad_input_fails_before_any_work(tmp_path, capsys):
    make_folder(tmp_path / 'data', train=1, val=1)
    tool = load_tool()
    base = ['--model', 'vit_tiny_patch16_224', '--data', str(tmp_path / 'data')]
    assert tool.main(base + ['--checkpoint', str(tmp_path / 'none.pth')]) == 2
    assert "--checkpoint" in capsys.readouterr().err
    checkpoint = tmp_path / 'c.pth'
    torch.save({}, checkpoint)
    assert tool.main(base + ['--checkpoint', str(checkpoint), '--methods', 'minmax']) == 2
    assert "method='minmax' is not an activation quantizer" in capsys.readouterr().err
    assert tool.main(base + ['--checkpoint', str(checkpoint), '--g-avg', '10']) == 2
    assert 'groups=10 is not one of candidates' in capsys.readouterr().err
