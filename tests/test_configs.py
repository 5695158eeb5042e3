"""Every config in configs/ loads with Config.fromfile and builds its model."""
import glob
import os.path as osp

import pytest
from mmengine.config import Config
from mmengine.registry import init_default_scope

from igq_plugin.mm import mm_settings

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIGS = sorted(p for p in glob.glob(osp.join(REPO, 'configs', '**', '*.py'), recursive=True)
                 if '_base_' not in p)


def test_configs_found():
    assert len(CONFIGS) >= 14


@pytest.mark.parametrize('path', CONFIGS, ids=lambda p: osp.relpath(p, REPO))
def test_config_builds(path):
    from mmdet.registry import MODELS
    cfg = Config.fromfile(path)
    init_default_scope(cfg.get('default_scope', 'mmdet'))
    model = MODELS.build(cfg.model)
    if 'igq' in osp.basename(path):
        config = mm_settings(model).config
        assert config.method == 'igq' and config.w_bits == config.a_bits
        assert cfg.custom_hooks[0].type == 'IGQCalibrationHook'
