"""benchmarks/benchmark.py and its parts: argument errors, the recorded command, the
figures each part derives from its raw ones, the markdown tables, a tiny quantizers run
and (slow) tiny runs of the model parts. Never a timing."""
import json
import os
import statistics
from types import SimpleNamespace

import pytest
import torch

from benchmarks import benchmark as bench
from benchmarks.parts import calibration, common, inference, memory, quantizers


def header_of(markdown: str) -> list[str]:
    """The column names of the first markdown table."""
    line = next(line for line in markdown.splitlines() if line.startswith('| '))
    return [cell.strip() for cell in line.strip('|').split('|')]


# -- arguments and output ----------------------------------------------------------------

@pytest.mark.parametrize('size', ['800', '800x', 'axb', '16x1216', '800x1216x3', '-800x1216'])
def test_bad_image_size_exits_with_usage_error(size, capsys):
    with pytest.raises(SystemExit) as error:
        bench.parse_args([f'--image-size={size}'])
    assert error.value.code == 2
    assert 'image size' in capsys.readouterr().err


def test_unknown_part_is_rejected(capsys):
    with pytest.raises(SystemExit):
        bench.parse_args(['--parts', 'inference,speed'])
    assert "unknown ['speed']" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason='needs a machine without CUDA')
def test_cuda_without_gpu_is_a_clear_error(capsys):
    with pytest.raises(SystemExit) as error:
        bench.parse_args(['--device', 'cuda'])
    assert error.value.code == 2
    assert 'CUDA is not available' in capsys.readouterr().err


def test_defaults():
    args = bench.parse_args([])
    assert args.parts == bench.PARTS == ('inference', 'quantizers', 'calibration', 'memory',
                                              'integer', 'onnx')
    assert args.image_size == (800, 1216) and args.calib_image_size == (256, 384)
    assert args.images == 3 and args.search == ['exact', 'fisher']
    assert args.out == 'work_dirs/benchmark'


@pytest.mark.parametrize('removed', ['--reuse-freed-memory', '--_memory-child=float'])
def test_removed_options_are_unknown(removed, capsys):
    with pytest.raises(SystemExit):
        bench.parse_args([removed])
    assert 'unrecognized arguments' in capsys.readouterr().err


def test_searches_of_the_calibration_part(capsys):
    assert bench.parse_args(['--search', 'naive', 'fisher-full']).search == ['naive',
                                                                            'fisher-full']
    with pytest.raises(SystemExit):
        bench.parse_args(['--search', 'fast'])
    assert "invalid choice: 'fast'" in capsys.readouterr().err


def test_command_line_records_threads_pinning_and_arguments(monkeypatch):
    monkeypatch.setenv('OMP_NUM_THREADS', '1')
    monkeypatch.setenv('MALLOC_MMAP_THRESHOLD_', '1073741824')
    monkeypatch.setattr(os, 'sched_getaffinity', lambda pid: {1}, raising=False)
    monkeypatch.setattr(os, 'cpu_count', lambda: 2)
    words = bench.command_line(['--parts', 'memory', '--out', 'a b']).split()
    assert words[:5] == ['OMP_NUM_THREADS=1', 'MALLOC_MMAP_THRESHOLD_=1073741824', 'taskset',
                         '-c', '1']
    assert words[6].endswith('benchmark.py') and words[7:] == ['--parts', 'memory', '--out',
                                                               "'a", "b'"]
    monkeypatch.setattr(os, 'sched_getaffinity', lambda pid: {0, 1}, raising=False)
    assert 'taskset' not in bench.command_line([])


def test_machine_line():
    machine = dict(cpu_count=2, machine='x86_64', torch_threads=1, device='cpu')
    assert common.machine_line(machine) == '2-core x86_64 CPU, 1 torch thread, no GPU'


# -- images and shapes -------------------------------------------------------------------

def test_swin_t_shapes_at_default_size():
    shapes = {s['name']: s['shape'] for s in quantizers.swin_t_shapes((800, 1216))}
    assert shapes['stage0 qkv/fc1 input'] == (1, 200 * 304, 96)
    assert shapes['stage3 fc2 input'] == (1, 25 * 38, 768 * 4)
    assert shapes['stage0 attention'] == (29 * 44 * 3, 49, 49)  # ceil(200/7) * ceil(304/7)
    assert shapes['stage3 attention'] == (4 * 6 * 24, 49, 49)


def test_natural_image_is_seeded_uint8_with_structure():
    image = common.natural_image(64, 96, seed=3)
    assert image.dtype == torch.uint8 and image.shape == (3, 64, 96)
    assert torch.equal(image, common.natural_image(64, 96, seed=3))
    assert not torch.equal(image, common.natural_image(64, 96, seed=4))
    pixels = image.float()
    # smooth: neighbouring pixels differ much less than random pixels do
    assert (pixels[..., 1:] - pixels[..., :-1]).abs().mean() < 0.3 * pixels.std()


# -- each part's derived figures and table, from made-up raw figures ---------------------

def test_inference_ratios_and_table():
    def entry(name, seconds, features):
        return dict(variant=common.Variant(name), seconds=seconds, features_seconds=features,
                    detections=[100, 100], report=SimpleNamespace(seconds=3.0, gbops=1.5))
    rows = [inference.row_of(entry('float', [2.0, 4.0, 3.0], [1.0, 1.0, 2.0])),
            inference.row_of(entry('per-tensor', [3.0, 9.0, 3.0], [2.0, 1.5, 3.0]))]
    inference.add_ratios(rows)
    quant = rows[1]
    assert quant['seconds_per_image'] == 5.0 and quant['median_seconds_per_image'] == 3.0
    assert quant['ratio_to_float'] == pytest.approx(5.0 / 3.0)
    assert quant['median_ratio_to_float'] == pytest.approx(1.0)
    assert quant['features_ratio_to_float'] == pytest.approx(2.0 / 1.0)
    assert rows[0]['ratio_to_float'] == 1.0
    text = inference.markdown(dict(image_size=[800, 1216], images=3, feature_repeats=1,
                                   rows=rows))
    assert header_of(text) == ['variant', 's/image (mean)', 'x float (mean)',
                               'x float (median)', 'backbone+neck s/image (median of 1 x 3)',
                               'backbone+neck x float', 'detections/image', 'calib s']
    assert '| per-tensor | 5 | 1.667 | 1 | 2 | 2 | 100 | 3 |' in text


def test_quantizer_ratios_follow_from_elements_per_second():
    speed = {label: 100.0 for label in quantizers.TIMED}
    speed.update({quantizers.READ: 300.0, quantizers.COPY: 150.0, quantizers.IGQ: 50.0,
                  quantizers.PER_TENSOR: 120.0})
    row = {label: dict(elements_per_second=s) for label, s in speed.items()}
    quantizers.add_ratios(row)
    assert row['two_pass_roofline_elements_per_second'] == pytest.approx(100.0)
    assert row['igq_over_roofline'] == pytest.approx(0.5)
    assert row['igq_over_per_tensor'] == pytest.approx(50 / 120)
    assert row['per_tensor_over_copy'] == pytest.approx(0.8)
    assert row['roofline_over_copy'] == pytest.approx(100 / 150)


def test_calibration_allocations_are_compared_with_the_first_search():
    def run(search, allocation, rois=None):
        return dict(search=search, search_rois=rois, allocation=allocation, layers=2,
                    candidates=12, phases={calibration.TOTAL: dict(seconds=10.0,
                                                                   float_forwards=5.0)})
    runs = [run('exact', {'a': 8, 'b': 4}), run('naive', {'a': 8, 'b': 4}),
            run('fisher', {'a': 8, 'b': 16}), run('exact top-5 RoIs', {'a': 1, 'b': 16}, 5)]
    assert calibration.compare_allocations(runs) is True
    assert [r.get('layers_with_other_groups') for r in runs] == [None, 0, 1, 2]
    runs[1]['allocation'] = {'a': 8, 'b': 8}
    assert calibration.compare_allocations(runs) is False
    assert calibration.compare_allocations(runs[2:]) is None  # no two exact searches
    text = calibration.markdown(dict(image_size=[256, 384], float_predict_seconds=2.0,
                                     runs=runs, same_allocation=False))
    assert header_of(text) == ['phase'] + [f'{r["search"]} {unit}' for r in runs
                                           for unit in ('s', 'float forwards')]
    assert 'fisher: 1 of 2 layers get another G than with exact.' in text


def test_memory_medians_and_their_ratios():
    def row(variant, peak, increase):
        return dict(variant=variant, setup_peak_rss_mib=1.0, rss_before_eval_mib=1.0,
                    eval_peak_rss_mib=peak, steady_peak_rss_mib=peak,
                    eval_rss_increase_mib=increase, cuda_max_allocated_mib=None)
    rows = [row('float', 1000.0, 500.0), row('igq-fixed G=8', 1300.0, 700.0),
            row('float', 1200.0, 600.0), row('igq-fixed G=8', 1500.0, 900.0)]
    part = dict(image_size=[800, 1216], images=3, repeats=2, environment={}, rows=rows,
                **memory.summary(rows))
    assert part['medians']['float']['eval_peak_rss_mib'] == 1100.0
    ratios = part['ratio_quantized_to_float']
    assert ratios == pytest.approx(dict(eval_peak_rss_mib=1400 / 1100,
                                        steady_peak_rss_mib=1400 / 1100,
                                        eval_rss_increase_mib=800 / 550))
    assert 'cuda_max_allocated_mib' not in ratios  # no CUDA figures, no ratio
    text = memory.markdown(part)
    assert header_of(text)[3] == 'eval peak RSS MiB'
    assert '| median igq-fixed G=8 | - | - | 1400 | 1400 | 800 | - |' in text
    assert 'glibc malloc defaults' in text


def test_memory_child_spec_round_trips_through_its_command_line():
    args = bench.parse_args(['--threads', '1', '--image-size', '64x96', '--images', '2'])
    spec = memory.child_spec(args, 'float')
    command = memory.child_command(spec, 'out.json')
    assert command[1:3] == ['-m', 'benchmarks.parts.memory']
    assert json.loads(command[3]) == spec and command[4] == 'out.json'
    assert spec['image_size'] == [64, 96] and spec['threads'] == 1


# -- runs --------------------------------------------------------------------------------

def test_quantizers_part_writes_its_file_pair(tmp_path, capsys):
    out = tmp_path / 'bench'
    assert bench.main(['--parts', 'quantizers', '--image-size', '32x64', '--min-time', '0.002',
                       '--out', str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ['quantizers.json', 'quantizers.md']
    saved = json.loads((out / 'quantizers.json').read_text())
    assert saved['machine']['torch'] == torch.__version__ and saved['part'] == 'quantizers'
    assert saved['settings']['image_size'] == [32, 64]
    rows = saved['result']['rows']
    assert len(rows) == 12  # 4 stages x (qkv/fc1, fc2, attention)
    for row in rows:
        for label in quantizers.TIMED:
            assert row[label]['elements_per_second'] == pytest.approx(
                row['elements'] / row[label]['seconds'])
        speed = {label: row[label]['elements_per_second'] for label in quantizers.TIMED}
        roofline = row['two_pass_roofline_elements_per_second']
        assert roofline == pytest.approx(1 / (1 / speed[quantizers.READ]
                                              + 1 / speed[quantizers.COPY]))
        assert row['igq_over_per_tensor'] == pytest.approx(
            speed[quantizers.IGQ] / speed[quantizers.PER_TENSOR])
    text = (out / 'quantizers.md').read_text()
    lines = text.splitlines()
    assert lines[0].startswith('# IGQ benchmark, quantizers')
    assert lines[2].startswith('- command: `') and '--parts quantizers' in lines[2]
    assert lines[3].startswith('- date: ') and lines[4].startswith('- machine: ')
    assert lines[5].startswith('- load average (1 min) before / after: ')
    assert set(saved['load_average']) == {'before', 'after'}
    assert header_of(text)[:3] == ['shape', 'elements', 'igq G=8']
    assert 'compiled' not in text and 'eager' not in text
    assert text in capsys.readouterr().out


def test_search_clock_sees_every_step_of_a_real_calibration():
    """The calibration part times the search through calibrate_mm_model's public
    ``progress=`` argument: one factory call, then one update per (layer, G) of the
    exact search."""
    from mmengine.registry import MODELS, init_default_scope
    from igq_plugin.mm import quantize_mm_model
    from igq_plugin.nn import igq_quantizers
    from tests.mm.tiny_models import tiny_batches, tiny_model_cfg
    init_default_scope('mmdet')
    torch.manual_seed(0)
    model = MODELS.build(tiny_model_cfg(quant=dict(method='igq', w_bits=4, a_bits=4,
                                                   groups=4)))
    model.eval()
    quantize_mm_model(model)
    clock = calibration.SearchClock(torch.device('cpu'))
    common.calibrate(model, tiny_batches(model, count=1), progress=clock, sensitivity='exact')
    layers = igq_quantizers(model)
    assert clock.steps == len(clock.stamps) == sum(len(q.candidates) for q in layers.values())
    assert clock.started <= clock.stamps[0] and clock.stamps == sorted(clock.stamps)


@pytest.mark.slow
def test_model_parts_run_at_a_tiny_size(tmp_path):
    out = tmp_path / 'bench'
    # the exact search on 5 RoIs: on all of them it takes minutes even at 64x96
    assert bench.main(['--parts', 'inference,calibration,memory', '--image-size', '64x96',
                       '--calib-image-size', '64x96', '--images', '2', '--feature-repeats',
                       '2', '--search', 'fisher', '--search-rois', '5', '--memory-repeats',
                       '1', '--threads', '1', '--out', str(out)]) == 0
    part = json.loads((out / 'inference.json').read_text())['result']
    rows = {row['variant']: row for row in part['rows']}
    assert list(rows) == [v.name for v in inference.VARIANTS]
    for row in rows.values():
        assert len(row['seconds']) == 2 and len(row['features_seconds']) == 2 * 2
        assert row['features_seconds_per_image'] == statistics.median(row['features_seconds'])
        assert row['features_ratio_to_float'] == pytest.approx(
            row['features_seconds_per_image'] / rows['float']['features_seconds_per_image'])
    part = json.loads((out / 'calibration.json').read_text())['result']
    assert [run['search'] for run in part['runs']] == ['fisher', 'exact top-5 RoIs']
    for run in part['runs']:
        phases = {name: phase['seconds'] for name, phase in run['phases'].items()}
        assert sum(phases[name] for name in (calibration.PREDICTOR, calibration.STATISTICS,
                                             calibration.SEARCH, calibration.ALLOCATION)) \
            == pytest.approx(run['wall_seconds'])
        assert phases[calibration.TOTAL] <= run['wall_seconds']
        assert run['phases'][calibration.SEARCH]['float_forwards'] == pytest.approx(
            phases[calibration.SEARCH] / part['float_predict_seconds'])
    part = json.loads((out / 'memory.json').read_text())['result']
    assert [row['variant'] for row in part['rows']] == [v.name for v in memory.VARIANTS]
    assert all(row['eval_peak_rss_mib'] >= row['steady_peak_rss_mib'] for row in part['rows'])
    for name in ('inference', 'calibration', 'memory'):
        assert (out / f'{name}.md').read_text().startswith(f'# IGQ benchmark, {name}')
