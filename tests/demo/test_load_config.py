"""``load_config``: the config every in-process Runner of the demos and tools starts from."""
from mmengine.config import Config

from igq_demo.evaluation import load_config
from igq_demo.tasks import DET


def test_load_config_skips_yapf_and_round_trips(tmp_path):
    cfg = load_config(DET.models['mask-rcnn'].quant_config, {'model.backbone.quant.a_bits': 6})
    # every MMEngine Runner logs and dumps cfg.pretty_text, formatted with yapf unless off
    assert cfg._format_python_code is False
    assert cfg.copy()._format_python_code is False
    cfg.dump(str(tmp_path / 'dumped.py'))
    again = Config.fromfile(str(tmp_path / 'dumped.py'))
    assert again.to_dict() == cfg.to_dict()
    assert again.model.backbone.quant.a_bits == 6
