"""``IGQBackbone``: builds a supported backbone and quantizes it in place.

Registered in MMEngine's root ``MODELS`` registry, so mmdet and mmseg configs both
find it. It is a builder, not a wrapper module: the returned backbone *is* the
float backbone with its Linear / Conv2d / Softmax layers swapped for quantized
ones, so every parameter keeps its name and a stock float checkpoint loads with
only quantizer buffers missing.

Config (all other keys go to the wrapped backbone)::

    backbone=dict(type='IGQBackbone', wrapped_type='SwinTransformer',
                  quant=dict(method='igq', w_bits=4, a_bits=4, groups=8), ...)
"""
from __future__ import annotations

from mmengine.registry import MODELS
from torch import nn

from mmcv.cnn.bricks.wrappers import Conv2d as MMCVConv2d
from mmcv.cnn.bricks.wrappers import Linear as MMCVLinear

from ..nn import QuantConfig, quantize_modules, register_float_layer, set_num_instances
from ..quant import FixedRangeQuantizer, QuantMode, mode_modules

# wrapped_type -> module that must define the built class (checked after building)
SUPPORTED_BACKBONES = {
    'SwinTransformer': ('mmdet.models.backbones.swin', 'mmseg.models.backbones.swin'),
    'mmdet.SwinTransformer': ('mmdet.models.backbones.swin',),
    'mmseg.SwinTransformer': ('mmseg.models.backbones.swin',),
}
FIRST_LAYERS = ('patch_embed.projection',)

# mmcv's wrappers only add empty-tensor handling, which the quantized layers keep.
register_float_layer(MMCVLinear)
register_float_layer(MMCVConv2d)


class QuantState:
    """Life cycle of a quantized model, checked before every backbone forward.

    ``UNCALIBRATED`` refuses to run (no silent float evaluation); ``CALIBRATING`` is
    set by the calibration code (any mode allowed); ``READY`` requires every
    quantizer to be in quantized mode.
    """

    UNCALIBRATED = 'uncalibrated'
    CALIBRATING = 'calibrating'
    READY = 'ready'


def quant_config_from_dict(quant: dict | None) -> QuantConfig:
    """Validate a ``quant=dict(...)`` config entry into a :class:`QuantConfig`."""
    quant = dict(quant or {})
    allowed = set(QuantConfig.__dataclass_fields__)
    unknown = sorted(set(quant) - allowed)
    if unknown:
        raise ValueError(f'quant config has unknown keys {unknown}: allowed are {sorted(allowed)}')
    return QuantConfig(**quant)


def check_wrapped_type(wrapped_type: str) -> str:
    """Reject backbones the plugin cannot quantize, before building anything."""
    if wrapped_type not in SUPPORTED_BACKBONES:
        raise ValueError(f'IGQBackbone cannot quantize wrapped_type={wrapped_type!r}: '
                         f'supported are {sorted(SUPPORTED_BACKBONES)}')
    return wrapped_type


def _guard(backbone: nn.Module, args) -> None:
    """Forward pre-hook: record the batch size and refuse silent float runs."""
    state = backbone.igq_state
    if state == QuantState.UNCALIBRATED:
        raise RuntimeError('IGQBackbone is not calibrated: add IGQCalibrationHook to '
                           'custom_hooks (or load a calibrated state) before evaluation')
    if state == QuantState.READY and any(m.mode is not QuantMode.QUANTIZED
                                         for m in mode_modules(backbone)):
        raise RuntimeError('IGQBackbone is calibrated but some quantizers are not in '
                           'quantized mode; refusing to evaluate a partly float model')
    set_num_instances(backbone, args[0].shape[0])


@MODELS.register_module()
def IGQBackbone(wrapped_type: str = 'SwinTransformer', quant: dict | None = None,  # noqa: N802
                **backbone_kwargs) -> nn.Module:
    """Build ``wrapped_type`` with ``backbone_kwargs`` and quantize it in place.

    Quantized (method doc, section 2): the input of every Linear (qkv, proj, fc1,
    fc2, patch-merging reduction) with the configured activation quantizer, weights
    per output channel, Q/K/V operands, the softmax attention by row groups, and the
    patch embedding (weights and input) at ``first_layer_bits``; the image input with
    the fixed range of normalised uint8 pixels (:func:`set_pixel_input_range`).

    Returns:
        The backbone, with attributes ``igq_config`` (:class:`QuantConfig`) and
        ``igq_state`` (:class:`QuantState`).

    Raises:
        ValueError: unsupported ``wrapped_type`` or an invalid ``quant`` entry.
        TypeError: the built backbone is not one of the supported classes.
    """
    check_wrapped_type(wrapped_type)
    config = quant_config_from_dict(quant)
    backbone = MODELS.build(dict(type=wrapped_type, **backbone_kwargs))
    module = type(backbone).__module__
    if module not in SUPPORTED_BACKBONES[wrapped_type]:
        raise TypeError(f'IGQBackbone: wrapped_type={wrapped_type!r} resolved to '
                        f'{module}.{type(backbone).__name__}, which it cannot quantize; '
                        f'expected a class from {SUPPORTED_BACKBONES[wrapped_type]}')
    quantize_modules(backbone, config, first_layers=FIRST_LAYERS)
    embed = backbone.get_submodule(FIRST_LAYERS[0])
    # [choice] the image input has a format-given range (set from the data
    # preprocessor by calibrate_model), not one calibrated on a single image.
    embed.input_quantizer = FixedRangeQuantizer(config.first_layer_bits, embed.in_channels,
                                                channel_dim=1)
    embed.input_quantizer.layer_name = f'{FIRST_LAYERS[0]}.input_quantizer'
    backbone.igq_config = config
    backbone.igq_state = QuantState.UNCALIBRATED
    backbone.register_forward_pre_hook(_guard)
    return backbone


def is_quantized_backbone(module: nn.Module) -> bool:
    """Whether ``module`` was built by :func:`IGQBackbone`."""
    return isinstance(getattr(module, 'igq_config', None), QuantConfig)


def set_quant_state(backbone: nn.Module, state: str) -> None:
    """Move a quantized backbone to another :class:`QuantState`."""
    backbone.igq_state = state



def set_pixel_input_range(model: nn.Module) -> None:
    """Give the patch embedding's input quantizer the range of normalised uint8 pixels.

    ``[(0 - mean) / std, (255 - mean) / std]`` per channel, from the model's data
    preprocessor; at 8 bits no pixel is clipped and the error is at most half a level.
    """
    quantizer = model.backbone.get_submodule(FIRST_LAYERS[0]).input_quantizer
    preprocessor = model.data_preprocessor
    mean = getattr(preprocessor, 'mean', None)
    std = getattr(preprocessor, 'std', None)
    if mean is None or std is None:
        raise ValueError(f'{type(preprocessor).__name__} has no mean/std: cannot derive the '
                         f'pixel range of the image input')
    quantizer.set_range((0.0 - mean) / std, (255.0 - mean) / std)
