"""The pretrained-like stress variant: same float function, outlier post-LN channels."""
import pytest
import torch
from mmengine.registry import MODELS, init_default_scope

from igq_demo.pretrained_like import (OutlierProfile, add_channel_outliers, channel_factors,
                                      post_norm_range_ratios)

from tests.mm.tiny_models import tiny_batches, tiny_model_cfg
from tests.mm.tiny_segmentors import VIT_UPERNET, tiny_seg_batches, tiny_segmentor_cfg


def backbone(model, image):
    return model.backbone(image)


@pytest.mark.parametrize('kind', ['swin-detector', 'vit-segmentor'])
def test_variant_computes_the_same_function_with_outlier_channels(kind):
    if kind == 'swin-detector':
        init_default_scope('mmdet')
        torch.manual_seed(0)
        model = MODELS.build(tiny_model_cfg()).eval()
        images = [b['inputs'] for b in tiny_batches(model, count=2)]
        # Swin: norm1 -> qkv and norm2 -> fc1 of 5 blocks, 3 patch mergings
        expected_pairs = 5 * 2 + 3
    else:
        init_default_scope('mmseg')
        torch.manual_seed(0)
        model = MODELS.build(tiny_segmentor_cfg(VIT_UPERNET)).eval()
        images = [b['inputs'] for b in tiny_seg_batches(model, count=2)]
        expected_pairs = 4 * 2  # ViT: norm1 -> in_proj and norm2 -> fc1 of 4 layers
    with torch.no_grad():
        before = [level for image in images for level in model.backbone(image)]
    plain = post_norm_range_ratios(model, images, backbone)
    factors = add_channel_outliers(model)
    with torch.no_grad():
        after = [level for image in images for level in model.backbone(image)]
    assert len(factors) == expected_pairs
    # float32 rounding of the rescaled LayerNorm and Linear, through a few blocks
    for a, b in zip(after, before):
        assert float((a - b).abs().max() / b.abs().max()) < 1e-5
    outliers = post_norm_range_ratios(model, images, backbone)
    assert max(plain.values()) < 10  # trained or random: no outlier channel yet
    assert min(outliers.values()) >= 5 and max(outliers.values()) >= 10


def test_factors_follow_the_profile():
    profile = OutlierProfile(fraction=0.05, low=10, high=50, sigma=0.3, seed=3)
    factors = channel_factors(200, profile, torch.Generator().manual_seed(3))
    outliers = factors[factors >= 10]
    assert len(outliers) == 10 and float(outliers.max()) <= 50
    rest = factors[factors < 10].log()
    assert abs(float(rest.mean())) < 0.1 and 0.2 < float(rest.std()) < 0.4
    # one outlier at least, however few the channels
    assert int((channel_factors(8, profile, torch.Generator()) >= 10).sum()) == 1


@pytest.mark.parametrize('field, value', [('fraction', 0.0), ('fraction', 1.5), ('low', 0.5),
                                          ('high', 5.0), ('sigma', -1.0)])
def test_bad_profile_is_named(field, value):
    with pytest.raises(ValueError, match=field):
        OutlierProfile(**{field: value})


def test_model_without_pairs_is_refused():
    with pytest.raises(ValueError, match='no LayerNorm -> Linear pair'):
        add_channel_outliers(torch.nn.Sequential(torch.nn.Linear(2, 2)))


def test_demo_variant_is_validated_and_has_its_own_output():
    from igq_demo.demo import DemoSettings, output_dir
    with pytest.raises(ValueError, match="variant='bogus'"):
        DemoSettings(variant='bogus').validate()
    plain, variant = DemoSettings(), DemoSettings(variant='pretrained-like')
    assert output_dir(plain) == 'work_dirs/demo'
    assert output_dir(variant) == 'work_dirs/demo/pretrained-like'
    assert output_dir(DemoSettings(task='seg', model='upernet-vit', variant='pretrained-like')) \
        == 'work_dirs/demo/pretrained-like/seg/upernet-vit'
