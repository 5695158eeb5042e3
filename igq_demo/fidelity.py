"""How far a quantized mm model's outputs are from its float outputs.

mAP and mIoU on a small val split move by sampling noise from one run to another;
the distance of the quantized model's outputs from its own float outputs on the same
images does not. Two figures, on images the model was not calibrated on:

- ``kl``: the mean of ``KL(p_float || p_quantized)`` over the class distributions the
  sensitivity search compares (:mod:`igq_plugin.mm.predictors`): per RoI on the float
  model's proposals for a two-stage detector, per pixel of the decode head's logits
  for a segmentor; averaged per image, then over images;
- ``feature_error``: the relative squared error ``||f_q - f||^2 / ||f||^2`` of the
  neck outputs (the backbone outputs without a neck), averaged over levels and images.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from igq_plugin import QuantState, float_run
from igq_plugin.mm import build_predictor
from igq_plugin.nn import require_record
from igq_plugin.search import mean_kl


@dataclass(frozen=True)
class Fidelity:
    """Distance of the quantized outputs from the float ones (see the module doc).

    Attributes:
        kl: mean per-RoI / per-pixel KL(p_float || p_quantized).
        feature_error: mean relative squared error of the neck outputs.
        images: images measured.
    """

    kl: float
    feature_error: float
    images: int


def relative_error(reference: Sequence[torch.Tensor], other: Sequence[torch.Tensor]) -> float:
    """Mean over levels of ``||other - reference||^2 / ||reference||^2``."""
    errors = [(o.double() - r.double()).pow(2).sum() / r.double().pow(2).sum().clamp(min=1e-30)
              for r, o in zip(reference, other, strict=True)]
    return float(torch.stack(errors).mean())


def output_fidelity(model: nn.Module, batches: Sequence[dict]) -> Fidelity:
    """Measure a calibrated mm model against its own float outputs (in eval mode; the
    model's training flag is restored afterwards).

    Args:
        model: a converted, calibrated (``READY``) detector or segmentor.
        batches: preprocessed single-image batches
            (:func:`igq_plugin.mm.take_calibration_batches`), e.g. val images.

    Raises:
        ValueError: no batches, or the model is not calibrated.
        TypeError: a model the sensitivity search cannot measure (no RoI head or
            decode head).
    """
    if not batches:
        raise ValueError('output_fidelity needs at least one image')
    if require_record(model).state is not QuantState.READY:
        raise ValueError('output_fidelity needs a calibrated model (state READY)')
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            with float_run(model):
                predictor = build_predictor(model, batches, reuse_prefix=False)
                reference = predictor.predict(None)
            quantized = predictor.predict(None)
            errors = [relative_error(floats, model.extract_feat(batch['inputs']))
                      for floats, batch in zip(predictor.features.floats, batches)]
    finally:
        model.train(was_training)
    return Fidelity(kl=mean_kl(reference, quantized), feature_error=sum(errors) / len(errors),
                    images=len(batches))
