"""The demo's tables and plot framing (no model runs)."""
from igq_demo.demo import _markdown, _one_line
from igq_demo.plots import value_limits
from igq_demo.tasks import SEG

RECORDS = [dict(method='float', w_bits=32, a_bits=32, g_avg=None, mIoU=80.0, aAcc=95.0,
                kl=None, feat_err=None, gbops=10.0, calib_seconds=0.0, eval_seconds=1.0),
           dict(method='igq', w_bits=4, a_bits=4, g_avg=8, mIoU=71.25, aAcc=93.5, kl=0.0123,
                feat_err=0.05, gbops=0.2, calib_seconds=3.0, eval_seconds=1.5)]


def test_results_table_shows_spread_and_the_change_from_float_after_each_metric():
    records = [RECORDS[0], dict(RECORDS[1], mIoU_std=0.5, kl_std=0.001, draws=5)]
    lines = _markdown(records, SEG.columns, list(SEG.metrics), 2).splitlines()
    header = [c.strip() for c in lines[0].strip('|').split('|')]
    assert header[3:9] == ['g_avg', 'draws', 'mIoU', 'd_mIoU', 'aAcc', 'd_aAcc']
    float_row = [c.strip() for c in lines[2].strip('|').split('|')]
    igq_row = [c.strip() for c in lines[3].strip('|').split('|')]
    assert float_row[6] == '-' and float_row[header.index('kl')] == '-'
    assert igq_row[5:9] == ['71.25 ± 0.50', '-8.75', '93.50', '-1.50']
    assert igq_row[header.index('kl')] == '0.0123 ± 0.0010'
    assert igq_row[header.index('gbops')] == '0.2' and igq_row[header.index('draws')] == '5'


def test_one_terminal_line_per_run():
    line = _one_line(RECORDS[1], SEG)
    assert '\n' not in line and line.startswith('igq W4/A4: mIoU 71.25 aAcc 93.5, kl 0.0123')


def test_value_axis_frames_the_values_within_the_metric_range():
    assert value_limits([60.0, 70.0], (0.0, 100.0)) == (58.5, 71.5)
    low, high = value_limits([0.99, 1.0], (0.0, 1.0))
    assert 0.98 < low < 0.99 and high == 1.0
    low, high = value_limits([0.5, 0.5], (0.0, 1.0))  # flat: a small window around it
    assert low < 0.5 < high


def test_protocols_are_checked_and_get_their_own_folder():
    import pytest
    from igq_demo.demo import PROTOCOLS, DemoSettings, output_dir
    assert output_dir(DemoSettings(out='o')) == 'o'
    assert output_dir(DemoSettings(out='o', protocol='full')) == 'o/full'
    assert output_dir(DemoSettings(out='o', model='cascade', protocol='full')) == 'o/cascade/full'
    assert PROTOCOLS['full'] == {'model.backbone.quant.rpn_head': True,
                                 'model.backbone.quant.roi_head': True}
    with pytest.raises(ValueError, match="protocol='all'"):
        DemoSettings(protocol='all').validate()
    with pytest.raises(ValueError, match='applies to detectors'):
        DemoSettings(task='seg', protocol='full').validate()


def test_a_detector_that_detects_nothing_scores_zero():
    from igq_demo.demo import _record
    from igq_demo.evaluation import EvaluationResult
    from igq_demo.tasks import DET
    empty = EvaluationResult(metrics={}, report=None, calib_seconds=1.0, eval_seconds=2.0)
    record = _record(DET, 'per-tensor', 4, 4, 1, empty, 7.5, draw=3, calib_images=27)
    assert (record['bbox_mAP'], record['segm_mAP'], record['draw']) == (0.0, 0.0, 3)
