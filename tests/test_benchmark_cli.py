"""benchmarks/benchmark.py: argument errors, Swin-T shapes, a tiny quantizers run, and (slow)
a tiny inference run."""
import importlib.util
import json
import os.path as osp
import statistics
import sys

import pytest
import torch

SCRIPT = osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), 'benchmarks', 'benchmark.py')


@pytest.fixture(scope='module')
def bench():
    spec = importlib.util.spec_from_file_location('igq_benchmark', SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


@pytest.mark.parametrize('size', ['800', '800x', 'axb', '16x1216', '800x1216x3', '-800x1216'])
def test_bad_image_size_exits_with_usage_error(bench, size, capsys):
    with pytest.raises(SystemExit) as error:
        bench.parse_args([f'--image-size={size}'])
    assert error.value.code == 2
    assert 'image size' in capsys.readouterr().err


def test_unknown_part_is_rejected(bench, capsys):
    with pytest.raises(SystemExit):
        bench.parse_args(['--parts', 'inference,speed'])
    assert "unknown ['speed']" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason='needs a machine without CUDA')
def test_cuda_without_gpu_is_a_clear_error(bench, capsys):
    with pytest.raises(SystemExit) as error:
        bench.parse_args(['--device', 'cuda'])
    assert error.value.code == 2
    assert 'CUDA is not available' in capsys.readouterr().err


def test_defaults(bench):
    args = bench.parse_args([])
    assert args.parts == bench.PARTS and args.image_size == (800, 1216)
    assert args.calib_image_size == args.image_size and args.images == 3


def test_reuse_freed_memory_reaches_the_memory_children(bench):
    args = bench.parse_args(['--reuse-freed-memory', '--threads', '1'])
    variant = bench.MEMORY_VARIANTS[0]
    assert '--reuse-freed-memory' in bench.child_command(args, variant, 'out.json')
    child = bench.parse_args(bench.child_command(args, variant, 'out.json')[2:])
    assert child.reuse_freed_memory and child.memory_child == variant.name
    assert '--reuse-freed-memory' not in bench.child_command(bench.parse_args([]), variant, 'o')


def test_searches_of_the_calibration_part(bench, capsys):
    assert bench.parse_args(['--search', 'fast', 'fisher']).search == ['fast', 'fisher']
    with pytest.raises(SystemExit):
        bench.parse_args(['--search', 'exact'])
    assert "invalid choice: 'exact'" in capsys.readouterr().err


def test_swin_t_shapes_at_default_size(bench):
    shapes = {s['name']: s['shape'] for s in bench.swin_t_shapes((800, 1216))}
    assert shapes['stage0 qkv/fc1 input'] == (1, 200 * 304, 96)
    assert shapes['stage3 fc2 input'] == (1, 25 * 38, 768 * 4)
    assert shapes['stage0 attention'] == (29 * 44 * 3, 49, 49)  # ceil(200/7) * ceil(304/7)
    assert shapes['stage3 attention'] == (4 * 6 * 24, 49, 49)


def test_natural_image_is_seeded_uint8_with_structure(bench):
    image = bench.natural_image(64, 96, seed=3)
    assert image.dtype == torch.uint8 and image.shape == (3, 64, 96)
    assert torch.equal(image, bench.natural_image(64, 96, seed=3))
    assert not torch.equal(image, bench.natural_image(64, 96, seed=4))
    pixels = image.float()
    # smooth: neighbouring pixels differ much less than random pixels do
    assert (pixels[..., 1:] - pixels[..., :-1]).abs().mean() < 0.3 * pixels.std()


def test_quantizers_part_writes_json_and_markdown(bench, tmp_path, capsys):
    out = tmp_path / 'bench' / 'result.json'
    assert bench.main(['--parts', 'quantizers', '--image-size', '32x64', '--min-time', '0.002',
                       '--out', str(out)]) == 0
    results = json.loads(out.read_text())
    assert results['machine']['torch'] == torch.__version__
    rows = results['quantizers']['rows']
    assert len(rows) == 12  # 4 stages x (qkv/fc1, fc2, attention)
    for row in rows:
        for label in ('igq G=8', 'per-tensor', 'torch per-tensor'):
            assert row[label]['elements_per_second'] > 0
        assert row['igq_over_per_tensor'] > 0
        for label in bench.QUANTIZER_LABELS:  # compiled and eager, side by side
            for timed in (row[label], row[label + bench.EAGER]):
                assert timed['elements_per_second'] > 0
                assert timed['first_call_seconds'] > 0 and timed['cached_call_seconds'] > 0
                assert timed['graphs_compiled'] >= 0
            # a 32x64 image gives tensors below the compiled paths' minimum size
            assert row[label]['compiled_path'] is False
            assert row['compiled_over_eager'][label] > 0
        # the memory-bandwidth references and the ratios derived from them
        for label in (bench.READ, bench.COPY, bench.IGQ_RANGES):
            assert row[label]['elements_per_second'] > 0
        read, copy = (row[k]['elements_per_second'] for k in (bench.READ, bench.COPY))
        roofline = row['two_pass_roofline_elements_per_second']
        assert roofline == pytest.approx(1 / (1 / read + 1 / copy))
        assert row['roofline_over_copy'] == pytest.approx(roofline / copy)
        assert row['igq_over_roofline'] == pytest.approx(
            row['igq G=8']['elements_per_second'] / roofline)
        assert row['per_tensor_over_copy'] == pytest.approx(
            row['per-tensor']['elements_per_second'] / copy)
    assert results['quantizers']['compile']['min_elements'] > 0
    table = (tmp_path / 'bench' / 'benchmark.md').read_text()
    assert '## Activation quantizers alone' in table
    assert '### First call (compiles a new layout) and cached call' in table
    assert '### Against memory bandwidth' in table
    assert table in capsys.readouterr().out


@pytest.mark.slow
def test_inference_part_times_backbone_and_neck_in_their_own_round_robin(bench, tmp_path):
    out = tmp_path / 'result.json'
    assert bench.main(['--parts', 'inference', '--image-size', '64x96', '--images', '2',
                       '--feature-repeats', '2', '--threads', '1', '--out', str(out)]) == 0
    part = json.loads(out.read_text())['inference']
    assert part['feature_repeats'] == 2 and part['features_statistic'] == 'median'
    rows = {row['variant']: row for row in part['rows']}
    assert list(rows) == [v.name for v in bench.INFERENCE_VARIANTS]
    for row in rows.values():
        assert len(row['seconds']) == 2 and len(row['features_seconds']) == 2 * 2
        assert row['features_seconds_per_image'] == statistics.median(row['features_seconds'])
        assert row['median_seconds_per_image'] == statistics.median(row['seconds'])
        assert row['features_ratio_to_float'] == pytest.approx(
            row['features_seconds_per_image'] / rows['float']['features_seconds_per_image'])
    assert rows['float']['median_ratio_to_float'] == 1.0
    table = (tmp_path / 'benchmark.md').read_text()
    assert 'backbone+neck s/image (median of 2 x 2)' in table
