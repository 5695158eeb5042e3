"""Results over calibration draws and the demo's splits (no model runs)."""
import json

import pytest

from igq_demo.draws import format_spread, significant_digits, summarize
from igq_demo.splits import CALIBRATION_POOL, calibration_pool_options, split_options
from igq_demo.tasks import DET, SEG


def run(method, draw, mAP, kl=0.01, bits=4):
    return dict(method=method, w_bits=bits, a_bits=bits, g_avg=8, draw=draw, bbox_mAP=mAP,
                kl=kl, feat_err=None if kl is None else 2 * kl, gbops=1.0, calib_seconds=2.0, eval_seconds=3.0)


def test_mean_and_sample_std_per_method_and_bits():
    records = [dict(run('float', None, 0.70, None), w_bits=32, a_bits=32, g_avg=None),
               run('igq', 0, 0.60, 0.01), run('igq', 1, 0.62, 0.03), run('igq', 2, 0.64, 0.02),
               run('igq', 0, 0.69, bits=6)]
    summary = summarize(records, ['bbox_mAP'])
    assert [(r['method'], r['w_bits'], r['draws']) for r in summary] == [
        ('float', 32, 1), ('igq', 4, 3), ('igq', 6, 1)]
    igq = summary[1]
    assert igq['bbox_mAP'] == pytest.approx(0.62)
    assert igq['bbox_mAP_std'] == pytest.approx(0.02)  # sample std (n - 1)
    assert igq['kl'] == pytest.approx(0.02) and igq['kl_std'] == pytest.approx(0.01)
    assert summary[0]['kl'] is None and summary[2]['bbox_mAP_std'] == 0.0


def test_spread_formatting():
    assert format_spread(0.6123, 0.0041, 3) == '0.612 ± 0.004'
    assert format_spread(0.6123, 0.0, 3) == '0.612'
    assert format_spread(None, None, 3) == '-'
    assert significant_digits(DET.metric_range) == 3
    assert significant_digits(SEG.metric_range) == 2


def test_holdout_split_never_overlaps_the_calibration_pool(tmp_path):
    root = tmp_path / 'coco'
    (root / 'annotations').mkdir(parents=True)
    images = [dict(id=i + 1, file_name=f'{i + 1:06d}.jpg', height=8, width=8)
              for i in range(CALIBRATION_POOL + 5)]
    annotations = [dict(id=i, image_id=image['id'], category_id=1, bbox=[0, 0, 2, 2])
                   for i, image in enumerate(images)]
    (root / 'annotations' / 'instances_train.json').write_text(json.dumps(
        dict(images=images, annotations=annotations, categories=[dict(id=1, name='a')])))
    options = split_options(DET, str(root) + '/', 'holdout', str(tmp_path / 'work'))
    assert options['test_dataloader.dataset.data_prefix.img'] == 'train/'
    with open(options['test_evaluator.ann_file']) as f:
        holdout = json.load(f)
    assert options['test_dataloader.dataset.ann_file'] == options['test_evaluator.ann_file']
    assert [i['id'] for i in holdout['images']] == list(range(CALIBRATION_POOL + 1,
                                                              CALIBRATION_POOL + 6))
    assert {a['image_id'] for a in holdout['annotations']} == {i['id'] for i in holdout['images']}
    assert calibration_pool_options('r/') == {'train_dataloader.dataset.data_root': 'r/',
                                              'train_dataloader.dataset.indices': CALIBRATION_POOL}
    assert split_options(DET, 'r/', 'val', 'w') == DET.data_options('r/')
    with pytest.raises(ValueError, match="split='test'"):
        split_options(DET, 'r/', 'test', 'w')


def test_seg_holdout_is_the_train_images_after_the_pool(tmp_path):
    for folder in ('ann_dir/train', 'img_dir/train'):
        (tmp_path / folder).mkdir(parents=True)
    for i in range(CALIBRATION_POOL + 3):
        (tmp_path / 'ann_dir' / 'train' / f'{i:06d}.png').touch()
    options = split_options(SEG, str(tmp_path) + '/', 'holdout', str(tmp_path / 'work'))
    assert options['test_dataloader.dataset.indices'] == [CALIBRATION_POOL, CALIBRATION_POOL + 1,
                                                          CALIBRATION_POOL + 2]
    assert options['test_dataloader.dataset.data_prefix.img_path'] == 'img_dir/train'


def test_demo_settings_checks_draws_split_and_count():
    from igq_demo.demo import DemoSettings, output_dir
    for settings, match in [(DemoSettings(draws=0), 'draws=0'),
                            (DemoSettings(split='test'), "split='test'"),
                            (DemoSettings(calib_images=0), 'calib_images=0'),
                            (DemoSettings(calib_images=CALIBRATION_POOL + 1), 'calibration pool')]:
        with pytest.raises(ValueError, match=match):
            settings.validate()
    assert output_dir(DemoSettings(out='o', split='holdout')) == 'o/holdout'
    assert output_dir(DemoSettings(out='o', variant='pretrained-like', split='holdout')) == \
        'o/pretrained-like/holdout'


def test_side_by_side_table_of_two_demo_outputs(tmp_path, capsys):
    import importlib.util
    import os.path as osp
    repo = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
    spec = importlib.util.spec_from_file_location('side_by_side',
                                                  osp.join(repo, 'tools', 'side_by_side.py'))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    for label, mAP in (('plain', 0.61), ('variant', 0.58)):
        records = [dict(run('float', None, 0.70, None), w_bits=32, a_bits=32, g_avg=None),
                   run('igq', 0, mAP), run('igq', 1, mAP + 0.02)]
        summary = summarize(records, ['bbox_mAP'])
        (tmp_path / label).mkdir()
        (tmp_path / label / 'results.json').write_text(json.dumps(
            dict(settings=dict(task='det'), summary=summary, runs=records)))
    assert tool.main([f'plain={tmp_path / "plain"}', f'variant={tmp_path / "variant"}',
                      '--metrics', 'bbox_mAP']) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == ('| method | bits | plain bbox_mAP | plain kl | variant bbox_mAP | '
                        'variant kl |')
    assert lines[3] == '| igq | W4/A4 | 0.620 ± 0.014 | 0.0100 | 0.590 ± 0.014 | 0.0100 |'
    # a second folder adds its rows (method, bits) the first lacks
    extra = [run('igq-reparam', 0, 0.63), run('igq-reparam', 1, 0.65), run('igq', 0, 0.1)]
    (tmp_path / 'extra').mkdir()
    (tmp_path / 'extra' / 'results.json').write_text(json.dumps(
        dict(settings=dict(task='det'), summary=summarize(extra, ['bbox_mAP']), runs=extra)))
    assert tool.main([f'plain={tmp_path / "plain"},{tmp_path / "extra"}',
                      '--metrics', 'bbox_mAP']) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[3] == '| igq | W4/A4 | 0.620 ± 0.014 | 0.0100 |'
    assert lines[4] == '| igq-reparam | W4/A4 | 0.640 ± 0.014 | 0.0100 |'
    # a run with other weight bits (activations-only) is its own row, labelled by both widths
    weights_float = [dict(run('igq', draw, 0.7), w_bits=16) for draw in (0, 1)]
    (tmp_path / 'a-only').mkdir()
    (tmp_path / 'a-only' / 'results.json').write_text(json.dumps(dict(
        settings=dict(task='det'), summary=summarize(weights_float, ['bbox_mAP']),
        runs=weights_float)))
    assert tool.main([f'plain={tmp_path / "plain"},{tmp_path / "a-only"}',
                      '--metrics', 'bbox_mAP']) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[3:] == ['| igq | W4/A4 | 0.620 ± 0.014 | 0.0100 |',
                         '| igq | W16/A4 | 0.700 | 0.0100 |']
    assert tool.main([f'x={tmp_path / "missing"}']) == 2
    assert tool.main(['no-label']) == 2
    assert "does not exist" in capsys.readouterr().err
