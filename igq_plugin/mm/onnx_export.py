"""ONNX export of an mm model's quantized part: a detector's or segmentor's backbone
and neck (``model.extract_feat``, what the default protocol quantizes).

The graph takes the preprocessed image batch ``[B, 3, H, W]`` (normalised and padded
as the model's ``data_preprocessor`` gives it) and returns the neck's feature maps,
one output per level. Its shape is fixed: export at the size it will run at.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..export.onnx_graph import OnnxExport, export_float_onnx, export_onnx


def extract_features(model: nn.Module, images: torch.Tensor) -> Sequence[torch.Tensor]:
    """``model.extract_feat(images)``: the backbone (and neck) feature maps."""
    return model.extract_feat(images)


def _check_feature_model(model: nn.Module) -> None:
    if not callable(getattr(model, 'extract_feat', None)):
        raise TypeError(f'{type(model).__name__} has no extract_feat: expected an mmdet '
                        f'detector or an mmseg segmentor')


def export_mm_features(model: nn.Module, images: torch.Tensor, path: str, *,
                       expose_codes: bool = False, dynamo: bool = True) -> OnnxExport:
    """Export the calibrated backbone + neck of ``model`` on ``images`` ``[B, 3, H, W]``
    (see :func:`~igq_plugin.export.onnx_graph.export_onnx`)."""
    _check_feature_model(model)
    return export_onnx(model, (images,), path, forward=extract_features,
                       expose_codes=expose_codes, dynamo=dynamo)


def export_mm_float_features(model: nn.Module, images: torch.Tensor, path: str, *,
                             dynamo: bool = True) -> OnnxExport:
    """The float graph of the same backbone + neck (the timing baseline)."""
    _check_feature_model(model)
    return export_float_onnx(model, (images,), path, forward=extract_features, dynamo=dynamo)
