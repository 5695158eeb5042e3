"""Resume a Swin backbone's forward from the block where a quantizer sits.

The sensitivity search (docs/method.md, section 5) quantizes one layer at a time and
runs the model on the calibration images once per (layer, G). Everything upstream
of that layer is float and identical in every one of those runs, so it is computed
once: :class:`SwinPrefixCache` keeps, per calibration image, the float input of
every Swin block and every stage's output feature map, and
:meth:`SwinPrefixCache.forward_from` recomputes only the blocks from the perturbed
one onwards. It calls the backbone's own modules in the order of
``SwinTransformer.forward`` (mmdet's and mmseg's are the same), so the result is
the same tensor the full forward gives.
"""
from __future__ import annotations

import re
from typing import Sequence

import torch
from torch import nn

from ..nn import set_num_instances

# A quantizer inside stage s: in block b, or in the stage's patch merging.
_STAGE_PART = re.compile(r'^stages\.(\d+)\.(?:blocks\.(\d+)|downsample)\.')

Position = tuple  # (stage, first block to recompute); block == len(blocks): downsample only


def is_resumable_swin(backbone: nn.Module) -> bool:
    """Whether ``backbone`` has the structure of mmdet's / mmseg's ``SwinTransformer``."""
    stages = getattr(backbone, 'stages', None)
    return (hasattr(backbone, 'patch_embed') and hasattr(backbone, 'out_indices')
            and isinstance(stages, nn.ModuleList) and len(stages) > 0
            and all(hasattr(stage, 'blocks') and hasattr(stage, 'downsample')
                    for stage in stages))


def layer_position(backbone: nn.Module, name: str) -> Position | None:
    """``(stage, block)`` to resume from for a quantizer named relative to the backbone.

    Returns ``None`` for layers before the first block (patch embedding), whose
    change reaches everything.
    """
    match = _STAGE_PART.match(name)
    if match is None:
        return None
    stage = int(match.group(1))
    if match.group(2) is None:  # patch merging at the end of the stage
        return stage, len(backbone.stages[stage].blocks)
    return stage, int(match.group(2))


class SwinPrefixCache:
    """Float block inputs and stage outputs of a Swin backbone on fixed images.

    Memory: one ``[1, tokens, C]`` tensor per block and one feature map per stage
    and image (about 0.2 GB for Swin-T on one 800x1216 image).

    Args:
        backbone: mmdet / mmseg ``SwinTransformer`` (possibly quantized), in float mode.
        images: preprocessed images, one ``[1, 3, H, W]`` tensor each.
    """

    def __init__(self, backbone: nn.Module, images: Sequence[torch.Tensor]):
        if not is_resumable_swin(backbone):
            raise TypeError(f'{type(backbone).__name__} is not a SwinTransformer-like backbone')
        self.backbone = backbone
        self.block_inputs: list[dict[Position, tuple]] = []
        self.stage_outputs: list[list[torch.Tensor | None]] = []
        with torch.no_grad():
            for image in images:
                inputs, outputs = {}, []
                self._run(image, inputs, outputs)
                self.block_inputs.append(inputs)
                self.stage_outputs.append(outputs)

    def _stem(self, image: torch.Tensor) -> tuple[torch.Tensor, tuple]:
        backbone = self.backbone
        x, hw_shape = backbone.patch_embed(image)
        if backbone.use_abs_pos_embed:
            x = x + backbone.absolute_pos_embed
        return backbone.drop_after_pos(x), hw_shape

    def _stage_output(self, stage: int, x: torch.Tensor, hw_shape) -> torch.Tensor | None:
        """The backbone's output for a stage: norm, then ``[1, C, h, w]``; ``None`` if
        the stage is not in ``out_indices``."""
        backbone = self.backbone
        if stage not in backbone.out_indices:
            return None
        out = getattr(backbone, f'norm{stage}')(x)
        return out.view(-1, *hw_shape, backbone.num_features[stage]).permute(0, 3, 1, 2).contiguous()

    def _run(self, image, record_inputs: dict | None, outputs: list, start: Position = (0, 0),
             x: torch.Tensor | None = None, hw_shape=None) -> None:
        """Run stages from ``start`` (``x`` is the input there; ``None``: from the image),
        appending stage outputs and optionally recording block inputs."""
        set_num_instances(self.backbone, 1)
        if x is None:
            x, hw_shape = self._stem(image)
        first_stage, first_block = start
        for stage_index in range(first_stage, len(self.backbone.stages)):
            stage = self.backbone.stages[stage_index]
            begin = first_block if stage_index == first_stage else 0
            for block_index in range(begin, len(stage.blocks)):
                if record_inputs is not None:
                    record_inputs[(stage_index, block_index)] = (x, hw_shape)
                x = stage.blocks[block_index](x, hw_shape)
            if record_inputs is not None:
                record_inputs[(stage_index, len(stage.blocks))] = (x, hw_shape)
            outputs.append(self._stage_output(stage_index, x, hw_shape))
            if stage.downsample:
                x, hw_shape = stage.downsample(x, hw_shape)

    def forward_from(self, image_index: int, position: Position | None,
                     image: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Backbone outputs (as ``SwinTransformer.forward`` returns them) when only the
        layers at or after ``position`` may differ from the cached float run.

        ``position=None`` runs the whole backbone from ``image``.
        """
        outputs: list = []
        if position is None:
            self._run(image, None, outputs)
        else:
            stage, block = position
            x, hw_shape = self.block_inputs[image_index][position]
            outputs = list(self.stage_outputs[image_index][:stage])
            if block == len(self.backbone.stages[stage].blocks):
                # Only the patch merging changes: this stage's output is the cached one.
                outputs.append(self.stage_outputs[image_index][stage])
                merge = self.backbone.stages[stage].downsample
                if stage + 1 < len(self.backbone.stages):
                    x, hw_shape = merge(x, hw_shape)
                    self._run(None, None, outputs, (stage + 1, 0), x, hw_shape)
            else:
                self._run(None, None, outputs, position, x, hw_shape)
        return [out for out in outputs if out is not None]

    def outputs(self, image_index: int) -> list[torch.Tensor]:
        """The cached float backbone outputs of one image."""
        return [out for out in self.stage_outputs[image_index] if out is not None]
