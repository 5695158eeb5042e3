"""mmcv's RoIAlign on fixed RoIs, as one sparse matrix per feature level.

RoIAlign with average pooling is linear in the feature map: every output bin is a
fixed weighted sum of feature pixels (bilinear weights of its sampling points,
averaged). The sensitivity search evaluates the RoI head hundreds of times on the
same float RoIs, so the weights are computed once per calibration image and each
evaluation is one sparse x dense product per level: the same values up to float
summation order, and several times faster than mmcv's CPU kernel at Swin-T sizes
(DEVELOPERS.md, "mmcv's CPU RoIAlign").

The weights follow mmcv's ``roi_align`` kernel exactly (``aligned`` offset, the
adaptive sampling grid ``ceil(roi_size / pooled)``, samples outside
``[-1, size]`` dropped, coordinates clamped to the border). Sampling points form a
grid, so a bin's weight of pixel ``(h, w)`` factorises into ``a_y(h) * a_x(w)``.
"""
from __future__ import annotations

import warnings
from typing import Sequence

import torch
from torch import nn


def _axis_weights(start: torch.Tensor, length: torch.Tensor, pooled: int, size: int,
                  sampling_ratio: int) -> torch.Tensor:
    """Averaged 1-D bilinear weights of every bin along one axis.

    Args:
        start: ``[N]`` RoI start on the feature grid (after scale and offset).
        length: ``[N]`` RoI extent on the feature grid.
        pooled: output bins along the axis (7 for a 7x7 RoIAlign).
        size: feature map extent along the axis.
        sampling_ratio: samples per bin (``<= 0``: ``ceil(length / pooled)``).

    Returns:
        ``[N, pooled, size]``: weight of each feature row/column in each bin, divided
        by the number of samples along this axis.
    """
    bin_size = length / pooled
    if sampling_ratio > 0:
        grid = torch.full_like(length, float(sampling_ratio))
    else:
        grid = torch.ceil(length / pooled)
    max_grid = max(int(grid.max()), 1) if grid.numel() else 1
    bins = torch.arange(pooled, dtype=start.dtype, device=start.device).view(1, -1, 1)
    samples = torch.arange(max_grid, dtype=start.dtype, device=start.device).view(1, 1, -1)
    start, bin_size, grid = (t.view(-1, 1, 1) for t in (start, bin_size, grid))
    # same operation order as the kernel: start + p * bin + (i + .5) * bin / grid
    coord = start + bins * bin_size + (samples + 0.5) * bin_size / grid.clamp(min=1)
    valid = (samples < grid) & (coord >= -1.0) & (coord <= size)
    coord = coord.clamp(min=0)
    low = coord.floor().long()
    at_edge = low >= size - 1
    low = torch.where(at_edge, torch.full_like(low, size - 1), low)
    high = torch.where(at_edge, low, low + 1)
    frac = torch.where(at_edge, torch.zeros_like(coord), coord - low.to(coord.dtype))
    weights = torch.zeros(start.shape[0], pooled, size, dtype=start.dtype, device=start.device)
    zero = torch.zeros_like(coord)
    weights.scatter_add_(2, low, torch.where(valid, 1.0 - frac, zero))
    weights.scatter_add_(2, high, torch.where(valid, frac, zero))
    return weights / grid.clamp(min=1)


def _band(weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-zero entries of each row of ``[N, P, S]``: indices and values ``[N, P, K]``
    in ascending index order, padded with zero weights."""
    nonzero = weights != 0
    width = max(int(nonzero.sum(-1).max()), 1) if weights.numel() else 1
    order = torch.sort(nonzero.to(torch.uint8), dim=-1, descending=True, stable=True).indices
    index = order[..., :width]
    return index, weights.gather(-1, index)


def roi_align_matrix(boxes: torch.Tensor, height: int, width: int, roi_layer: nn.Module
                     ) -> torch.Tensor:
    """The linear map of an mmcv ``RoIAlign`` (avg pooling) on fixed boxes.

    Args:
        boxes: ``[N, 4]`` ``(x1, y1, x2, y2)`` in input-image pixels.
        height: feature map height ``H``.
        width: feature map width ``W``.
        roi_layer: the ``mmcv.ops.RoIAlign`` (its output size, spatial scale,
            sampling ratio and ``aligned``).

    Returns:
        Sparse CSR ``[N * ph * pw, H * W]``: row ``(n, i, j)`` holds the weights of
        output bin ``(i, j)`` of box ``n``.
    """
    pooled_h, pooled_w = roi_layer.output_size
    offset = 0.5 if roi_layer.aligned else 0.0
    scaled = boxes.float() * roi_layer.spatial_scale - offset
    extent_w, extent_h = scaled[:, 2] - scaled[:, 0], scaled[:, 3] - scaled[:, 1]
    if not roi_layer.aligned:  # the kernel's backward-compatible minimum size
        extent_w, extent_h = extent_w.clamp(min=1.0), extent_h.clamp(min=1.0)
    ratio = int(roi_layer.sampling_ratio)
    rows_h, vals_h = _band(_axis_weights(scaled[:, 1], extent_h, pooled_h, height, ratio))
    cols_w, vals_w = _band(_axis_weights(scaled[:, 0], extent_w, pooled_w, width, ratio))
    count = boxes.shape[0]
    # [N, ph, pw, Kh, Kw] entries of the outer products a_y(h) * a_x(w)
    values = vals_h[:, :, None, :, None] * vals_w[:, None, :, None, :]
    columns = rows_h[:, :, None, :, None] * width + cols_w[:, None, :, None, :]
    values, columns = values.flatten(3), columns.flatten(3)
    keep = values != 0
    row_of = torch.arange(count * pooled_h * pooled_w, device=boxes.device).view(
        count, pooled_h, pooled_w, 1).expand_as(values)
    rows = row_of[keep]
    crow = torch.zeros(count * pooled_h * pooled_w + 1, dtype=torch.long, device=boxes.device)
    crow[1:] = torch.cumsum(torch.bincount(rows, minlength=count * pooled_h * pooled_w), 0)
    with warnings.catch_warnings():
        warnings.filterwarnings('ignore', message='Sparse CSR tensor support is in beta')
        return torch.sparse_csr_tensor(crow, columns[keep], values[keep],
                                       (count * pooled_h * pooled_w, height * width),
                                       check_invariants=True)


def supports(extractor: nn.Module) -> bool:
    """Whether ``extractor`` is an mmdet ``SingleRoIExtractor`` over mmcv ``RoIAlign``
    layers with average pooling (the linear case :class:`FixedRoIExtractor` covers)."""
    layers = getattr(extractor, 'roi_layers', None)
    if type(extractor).__name__ != 'SingleRoIExtractor' or not layers:
        return False
    return all(type(layer).__name__ == 'RoIAlign' and getattr(layer, 'pool_mode', None) == 'avg'
               and not getattr(layer, 'use_torchvision', False) for layer in layers)


class FixedRoIExtractor:
    """``extractor(feats, rois)`` for one image and RoIs fixed in advance.

    Args:
        extractor: a :func:`supports`-ed ``SingleRoIExtractor``.
        rois: ``[N, 5]`` ``(batch index 0, x1, y1, x2, y2)``.
        feat_shapes: ``(H, W)`` of each input level of the extractor.
    """

    def __init__(self, extractor: nn.Module, rois: torch.Tensor,
                 feat_shapes: Sequence[tuple[int, int]]):
        if not supports(extractor):
            raise TypeError(f'{type(extractor).__name__} is not a SingleRoIExtractor over '
                            f'average-pooling mmcv RoIAlign layers')
        if rois.numel() and bool((rois[:, 0] != 0).any()):
            raise ValueError('FixedRoIExtractor takes the RoIs of one image (batch index 0)')
        num_levels = len(feat_shapes)
        self.num_rois = rois.shape[0]
        self.out_channels = extractor.out_channels
        self.output_size = tuple(extractor.roi_layers[0].output_size)
        if num_levels == 1:
            levels = torch.zeros(self.num_rois, dtype=torch.long, device=rois.device)
        else:
            levels = extractor.map_roi_levels(rois, num_levels)
        self.levels = []  # (level, RoI indices [n], CSR matrix [n * ph * pw, H * W])
        for level, (height, width) in enumerate(feat_shapes):
            index = (levels == level).nonzero(as_tuple=False).squeeze(1)
            if index.numel():
                matrix = roi_align_matrix(rois[index, 1:], height, width,
                                          extractor.roi_layers[level])
                self.levels.append((level, index, matrix))

    def __call__(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        """RoI features ``[N, C, ph, pw]`` from level features ``[1, C, H_l, W_l]``."""
        out = feats[0].new_zeros(self.num_rois, self.out_channels, *self.output_size)
        for level, index, matrix in self.levels:
            feat = feats[level][0]
            pixels = feat.reshape(feat.shape[0], -1).t().contiguous().to(matrix.dtype)  # [H*W, C]
            pooled = (matrix @ pixels).view(index.numel(), *self.output_size, -1)
            out[index] = pooled.permute(0, 3, 1, 2).to(out.dtype)
        return out
