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


@pytest.mark.parametrize('path', [p for p in CONFIGS if '/demo' in p and 'igq' in osp.basename(p)],
                         ids=lambda p: osp.relpath(p, REPO))
def test_demo_quant_configs_calibrate_on_the_generated_train_split(path):
    """The hook reads the train dataset; `make demo` generates only data/synthetic_*."""
    cfg = Config.fromfile(path)
    hook = cfg.custom_hooks[0]
    assert hook.get('dataloader', 'train') == 'train' and hook.get('num_images') is None
    assert cfg.train_dataloader.dataset.data_root == cfg.test_dataloader.dataset.data_root
