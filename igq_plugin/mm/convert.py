"""The one conversion path of an mm detector or segmentor.

Every key that chooses what is quantized lives in ``model.backbone.quant`` (README,
"Methods and options"): the :class:`~igq_plugin.nn.QuantConfig` fields plus the parts
switches below. ``IGQBackbone`` validates them when the model is built;
:func:`quantize_mm_model` converts every selected part (backbone, neck, RoI heads,
decode head) through :func:`igq_plugin.nn.quantize_model`. The calibration hook, the
evaluation helpers, the benchmark and the tests all call it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, fields

import torch
from torch import nn

from mmcv.cnn.bricks.wrappers import Conv2d as MMCVConv2d
from mmcv.cnn.bricks.wrappers import Linear as MMCVLinear

from ..nn import (QuantConfig, QuantizationRecord, quantization_record, quantize_model,
                  quantizer_buffers)

# mmcv's wrappers only add empty-tensor handling, which the quantized layers keep.
MMCV_FLOAT_LAYERS = (MMCVLinear, MMCVConv2d)

SETTINGS_ATTRIBUTE = 'igq_settings'
# The patch embedding of mmdet's / mmseg's Swin and of mmseg's ViT: 8-bit weights and a
# fixed input range (normalised uint8 pixels) [choice, as in RepQ-ViT's protocol].
FIRST_LAYER = 'backbone.patch_embed.projection'


@dataclass(frozen=True)
class MMQuantSettings:
    """``model.backbone.quant``: what is quantized and how.

    Attributes:
        config: the quantizer settings (every :class:`QuantConfig` field).
        neck: quantize the neck's convolutions (FPN).
        rpn_head: quantize the RPN's convolutions (two-stage detectors).
        roi_head: quantize the RoI heads' Linear / Conv2d layers (detectors).
        decode_head: quantize the decode head (segmentors; the auxiliary head, unused
            at inference, stays float).
    """

    config: QuantConfig
    neck: bool = True
    rpn_head: bool = False
    roi_head: bool = False
    decode_head: bool = True

    @classmethod
    def from_dict(cls, quant: dict | None) -> 'MMQuantSettings':
        """Validate a ``quant=dict(...)`` entry (unknown keys are an error)."""
        quant = dict(quant or {})
        parts = {f.name for f in fields(cls)} - {'config'}
        allowed = parts | set(QuantConfig.__dataclass_fields__)
        unknown = sorted(set(quant) - allowed)
        if unknown:
            raise ValueError(f'quant config has unknown keys {unknown}: allowed are '
                             f'{sorted(allowed)}')
        switches = {key: quant.pop(key) for key in parts if key in quant}
        for key, value in switches.items():
            if not isinstance(value, bool):
                raise ValueError(f'quant.{key}={value!r}: must be True or False')
        return cls(config=QuantConfig(**quant), **switches)

    def as_dict(self) -> dict:
        """Flat settings, as written in the config (for state files and logs)."""
        return dict(self.config.as_dict(), neck=self.neck, rpn_head=self.rpn_head,
                    roi_head=self.roi_head, decode_head=self.decode_head)

    def parts(self, model: nn.Module) -> tuple[str, ...]:
        """Names of the parts of ``model`` to quantize."""
        selected = ['backbone']
        for part, enabled in (('neck', self.neck), ('rpn_head', self.rpn_head),
                              ('roi_head', self.roi_head), ('decode_head', self.decode_head)):
            if enabled and isinstance(getattr(model, part, None), nn.Module):
                selected.append(part)
        return tuple(selected)


def mm_settings(model: nn.Module) -> MMQuantSettings | None:
    """The settings ``IGQBackbone`` attached to ``model.backbone`` (``None``: float)."""
    settings = getattr(getattr(model, 'backbone', None), SETTINGS_ATTRIBUTE, None)
    return settings if isinstance(settings, MMQuantSettings) else None


def pixel_range(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """``([C], [C])``: the range of normalised uint8 pixels, ``(0 - mean) / std`` to
    ``(255 - mean) / std``, from the model's data preprocessor; at 8 bits no pixel is
    clipped and the error is at most half a level."""
    preprocessor = getattr(model, 'data_preprocessor', None)
    mean, std = getattr(preprocessor, 'mean', None), getattr(preprocessor, 'std', None)
    if mean is None or std is None:
        raise ValueError(f'{type(preprocessor).__name__} has no mean/std: cannot derive the '
                         f'pixel range of the image input')
    mean, std = mean.reshape(-1).float(), std.reshape(-1).float()
    return (0.0 - mean) / std, (255.0 - mean) / std


def quantize_mm_model(model: nn.Module) -> QuantizationRecord:
    """Convert an mm detector or segmentor whose backbone is ``IGQBackbone``.

    Returns:
        The model's quantization record (already converted models return theirs).

    Raises:
        TypeError: ``model.backbone`` was not built by ``IGQBackbone``.
    """
    record = quantization_record(model)
    if record is not None:
        return record
    settings = mm_settings(model)
    if settings is None:
        raise TypeError(f'{type(model).__name__}.backbone was not built by IGQBackbone: '
                        f"set model.backbone.type='IGQBackbone' and wrapped_type")
    parts = settings.parts(model)
    # [choice] the decode head's classifier (1x1 conv to the class logits) stays float,
    # like the auxiliary head: quantized are the PPM, lateral / FPN convs and bottleneck
    exclude = tuple(name for name in ('decode_head.conv_seg',)
                    if 'decode_head' in parts and _has_module(model, name))
    return quantize_model(model, settings.config, include=parts, exclude=exclude,
                          first_layers=(FIRST_LAYER,),
                          input_range=pixel_range(model), instance_roots=('backbone',),
                          float_layers=MMCV_FLOAT_LAYERS)



def _has_module(model: nn.Module, name: str) -> bool:
    try:
        model.get_submodule(name)
    except AttributeError:
        return False
    return True


def fit_float_checkpoint(model: nn.Module, checkpoint: dict) -> str:
    """Check a float checkpoint against a converted model; complete it in place.

    The checkpoint (``{'state_dict': ...}`` or a bare state dict, keys possibly
    prefixed ``module.``) must hold exactly the model's float tensors. Quantizer
    buffers, which no float checkpoint has (calibration computes them), are filled in
    from the model, so that loading it reports only real mismatches.

    Returns:
        A one-line report for the log.

    Raises:
        ValueError: float tensors missing from the checkpoint, or keys the model lacks.
    """
    state_dict = checkpoint.get('state_dict', checkpoint)
    saved = {re.sub(r'^module\.', '', key) for key in state_dict}
    quantizer = set(quantizer_buffers(model))
    own = model.state_dict()
    floats = {k for k in own if k not in quantizer and not k.endswith('num_batches_tracked')}
    missing = sorted(floats - saved)
    unexpected = sorted(saved - set(own))
    if missing or unexpected:
        raise ValueError(f'IGQ: the checkpoint does not fit {type(model).__name__}: '
                         f'{len(missing)} float tensors missing {missing[:8]}, '
                         f'{len(unexpected)} unexpected {unexpected[:8]}; load the float '
                         f'checkpoint trained for this config')
    absent = sorted(quantizer - saved)
    for key in absent:
        state_dict[key] = own[key]
    return (f'IGQ: float checkpoint fits the model ({len(floats)} float tensors); '
            f'{len(absent)} quantizer buffers not in it (calibrated next)')
