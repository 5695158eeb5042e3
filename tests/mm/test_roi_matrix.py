"""RoIAlign as a precomputed sparse matrix must pool as mmcv's RoIAlign does."""
import pytest
import torch
from mmcv.ops import RoIAlign
from mmdet.models.roi_heads.roi_extractors import SingleRoIExtractor

from igq_plugin.mm.roi_matrix import FixedRoIExtractor, roi_align_matrix, supports


def random_rois(count: int, height: int, width: int, stride: int, seed: int = 0):
    """``[N, 5]`` boxes of one image, some partly outside it, some of size 0."""
    gen = torch.Generator().manual_seed(seed)
    size = torch.tensor([width * stride, height * stride], dtype=torch.float32)
    corner = torch.rand(count, 2, generator=gen) * (size + 40) - 20
    extent = torch.rand(count, 2, generator=gen) * size / 2
    extent[:4] = 0
    return torch.cat([torch.zeros(count, 1), corner, corner + extent], dim=1)


@pytest.mark.parametrize('aligned', [True, False])
@pytest.mark.parametrize('sampling_ratio', [0, 2])
def test_matrix_pools_like_mmcv_roi_align(aligned, sampling_ratio):
    height, width, channels = 13, 21, 6
    feat = torch.randn(1, channels, height, width, generator=torch.Generator().manual_seed(1))
    rois = random_rois(200, height, width, stride=4)
    layer = RoIAlign((7, 7), 0.25, sampling_ratio, aligned=aligned)
    matrix = roi_align_matrix(rois[:, 1:], height, width, layer)
    assert matrix.layout == torch.sparse_csr and matrix.shape == (200 * 49, height * width)
    pooled = (matrix @ feat[0].reshape(channels, -1).t()).view(200, 7, 7, channels)
    expected = layer(feat, rois)
    torch.testing.assert_close(pooled.permute(0, 3, 1, 2), expected, rtol=1e-5, atol=1e-5)


def extractor(pool_mode='avg'):
    return SingleRoIExtractor(
        roi_layer=dict(type='RoIAlign', output_size=7, sampling_ratio=0, pool_mode=pool_mode),
        out_channels=8, featmap_strides=[4, 8, 16, 32])


def test_fixed_extractor_equals_single_roi_extractor_over_levels():
    module = extractor()
    gen = torch.Generator().manual_seed(2)
    feats = [torch.randn(1, 8, 64 // s, 96 // s, generator=gen) for s in (1, 2, 4, 8)]
    rois = random_rois(300, 64, 96, stride=4, seed=3)
    fixed = FixedRoIExtractor(module, rois, [f.shape[-2:] for f in feats])
    assert len({level for level, _, _ in fixed.levels}) > 1  # RoIs on several levels
    torch.testing.assert_close(fixed(feats), module(feats, rois), rtol=1e-5, atol=1e-5)


def test_unsupported_pooling_and_batches_are_refused():
    assert supports(extractor())
    assert not supports(extractor('max'))  # max pooling is not linear
    rois = random_rois(5, 16, 16, stride=4)
    with pytest.raises(TypeError, match='average-pooling'):
        FixedRoIExtractor(extractor('max'), rois, [(16, 16)] * 4)
    rois[2, 0] = 1
    with pytest.raises(ValueError, match='one image'):
        FixedRoIExtractor(extractor(), rois, [(16, 16)] * 4)
