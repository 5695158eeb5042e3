"""``IGQBackbone``: builds a supported backbone and carries the quantization settings.

Registered in MMEngine's root ``MODELS`` registry, so mmdet and mmseg configs both
find it. It is a builder, not a wrapper module: it returns the float backbone itself
(every parameter keeps its name, so a stock float checkpoint loads into it), with the
validated :class:`~.convert.MMQuantSettings` attached. The model is converted as a
whole, backbone and the other selected parts together, by
:func:`~.convert.quantize_mm_model` (``IGQCalibrationHook`` calls it before the
checkpoint is loaded); until then the backbone refuses to run, so a config that asks
for quantization never evaluates in float.

Config (all other keys go to the wrapped backbone)::

    backbone=dict(type='IGQBackbone', wrapped_type='SwinTransformer',
                  quant=dict(method='igq', w_bits=4, a_bits=4, groups=8), ...)
"""
from __future__ import annotations

from mmengine.registry import MODELS
from torch import nn

from ..quant.mode import ModeSwitchMixin
from .convert import SETTINGS_ATTRIBUTE, MMQuantSettings

# wrapped_type -> modules that may define the built class (checked after building)
SUPPORTED_BACKBONES = {
    'SwinTransformer': ('mmdet.models.backbones.swin', 'mmseg.models.backbones.swin'),
    'mmdet.SwinTransformer': ('mmdet.models.backbones.swin',),
    'mmseg.SwinTransformer': ('mmseg.models.backbones.swin',),
    'VisionTransformer': ('mmseg.models.backbones.vit',),
    'mmseg.VisionTransformer': ('mmseg.models.backbones.vit',),
}


def check_wrapped_type(wrapped_type: str) -> str:
    """Reject backbones the plugin cannot quantize, before building anything."""
    if wrapped_type not in SUPPORTED_BACKBONES:
        raise ValueError(f'IGQBackbone cannot quantize wrapped_type={wrapped_type!r}: '
                         f'supported are {sorted(SUPPORTED_BACKBONES)}')
    return wrapped_type


class _RefuseUnconverted:
    """Forward pre-hook of a backbone whose model was never converted."""

    converted = False

    def __call__(self, backbone: nn.Module, args) -> None:
        if not self.converted:
            self.converted = any(isinstance(m, ModeSwitchMixin) for m in backbone.modules())
        if not self.converted:
            raise RuntimeError('IGQBackbone: the model was never quantized; add '
                               'IGQCalibrationHook to custom_hooks, or call '
                               'igq_plugin.mm.quantize_mm_model(model) and calibrate it')


@MODELS.register_module()
def IGQBackbone(wrapped_type: str = 'SwinTransformer', quant: dict | None = None,  # noqa: N802
                **backbone_kwargs) -> nn.Module:
    """Build ``wrapped_type`` with ``backbone_kwargs`` and attach the quantization settings.

    Returns:
        The float backbone, with ``igq_settings`` (:class:`~.convert.MMQuantSettings`).

    Raises:
        ValueError: unsupported ``wrapped_type`` or an invalid ``quant`` entry.
        TypeError: the built backbone is not one of the supported classes.
    """
    check_wrapped_type(wrapped_type)
    settings = MMQuantSettings.from_dict(quant)
    backbone = MODELS.build(dict(type=wrapped_type, **backbone_kwargs))
    module = type(backbone).__module__
    if module not in SUPPORTED_BACKBONES[wrapped_type]:
        raise TypeError(f'IGQBackbone: wrapped_type={wrapped_type!r} resolved to '
                        f'{module}.{type(backbone).__name__}, which it cannot quantize; '
                        f'expected a class from {SUPPORTED_BACKBONES[wrapped_type]}')
    setattr(backbone, SETTINGS_ATTRIBUTE, settings)
    backbone.register_forward_pre_hook(_RefuseUnconverted())
    return backbone
