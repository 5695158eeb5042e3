"""Per-layer sensitivity tables Omega_l(G) (docs/method.md, section 5).

``Omega_l(G)`` is the mean over calibration images of ``KL(p_float || p_{l,G})``,
where only layer ``l``'s activation quantizer is active, with ``G`` groups, and
``p`` are the model's predicted class distributions (for two-stage detectors: one
distribution per RoI, averaged over the RoIs of an image). The model-specific part
(what "predict" means) is a callable supplied by the caller, so this module stays
free of any detection library.
"""
from __future__ import annotations

from typing import Callable, Iterator, Mapping, Protocol, Sequence, runtime_checkable

import torch

from ..quant import QuantMode, quant_mode
from ..quantizers import IGQQuantizer


@runtime_checkable
class SensitivityPredictor(Protocol):
    """What the sensitivity search needs from the caller: the model's class
    distributions on the calibration images.

    ``predict(layer)`` runs the model (in whatever mode its quantizers are in) and
    returns one ``[R_i, K]`` probability tensor per calibration image (R_i items:
    1 for a classifier's image, RoIs of a detector, pixels of a segmentor). ``layer``
    names the only quantizer that may differ from float (``None``: any may), so an
    implementation may reuse cached float activations upstream of it; the result
    must be the same as without that reuse.
    """

    def predict(self, layer: str | None) -> Sequence[torch.Tensor]:
        ...


@runtime_checkable
class FisherPredictor(SensitivityPredictor, Protocol):
    """A :class:`SensitivityPredictor` that also gives differentiable log-probabilities,
    for the ``'fisher'`` estimator (:func:`~.fisher.fisher_tables`).

    ``log_probs()`` yields, lazily and in the order of ``predict``, one ``[R_i, K]``
    tensor of log-probabilities per calibration image: the same items and classes as
    ``predict(None)`` (so ``exp`` of it is ``predict(None)`` up to float rounding),
    computed with autograd on by a full forward of the model as it stands (the caller
    puts it in float mode) that recomputes every activation a quantizer sees (no cached
    float prefix). Yielding one image at a time lets the caller back-propagate and
    free that image's graph before the next.
    """

    def log_probs(self) -> Iterator[torch.Tensor]:
        ...


# Floor for probabilities inside the log: keeps KL finite when a class gets 0.
PROB_FLOOR = 1e-12


def kl_divergence(reference: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """Row-wise ``KL(reference || other)`` of probability distributions.

    Args:
        reference: ``[R, K]`` probabilities (rows sum to 1).
        other: ``[R, K]`` probabilities.

    Returns:
        ``[R]`` non-negative divergences.

    Example:
        >>> p = torch.tensor([[0.5, 0.5]])
        >>> kl_divergence(p, p)
        tensor([0.])
    """
    if reference.shape != other.shape:
        raise ValueError(f'distribution shapes differ: {tuple(reference.shape)} vs '
                         f'{tuple(other.shape)}')
    ref = reference.double().clamp(min=PROB_FLOOR)
    oth = other.double().clamp(min=PROB_FLOOR)
    return (ref * (ref.log() - oth.log())).sum(-1).clamp(min=0).float()


def mean_kl(reference: Sequence[torch.Tensor], outputs: Sequence[torch.Tensor]) -> float:
    """Mean over images of the mean per-item KL (one tensor ``[R_i, K]`` per image)."""
    if len(reference) != len(outputs) or not reference:
        raise ValueError(f'need one distribution tensor per calibration image: got '
                         f'{len(reference)} reference and {len(outputs)} outputs')
    per_image = [kl_divergence(r, o).mean() if r.numel() else torch.tensor(0.0)
                 for r, o in zip(reference, outputs)]
    return float(torch.stack(per_image).mean())


def sensitivity_tables(model: torch.nn.Module, layers: Mapping[str, IGQQuantizer],
                       predictor: SensitivityPredictor,
                       reference: Sequence[torch.Tensor] | None = None,
                       on_step: Callable[[], None] | None = None
                       ) -> dict[str, dict[int, float]]:
    """Sensitivity search: one prediction per (layer, candidate G).

    Args:
        model: the model holding ``layers`` (all its quantizers are put in float mode,
            except the one layer being measured).
        layers: calibrated IGQ quantizers by name.
        predictor: the model's class distributions (:class:`SensitivityPredictor`).
        reference: float predictions; computed with ``predictor`` when ``None``.
        on_step: called after every (layer, G) evaluation (progress reporting).

    Returns:
        ``{layer: {G: Omega}}`` for every candidate G of every layer.
    """
    tables: dict[str, dict[int, float]] = {}
    with torch.no_grad(), quant_mode(model, QuantMode.FLOAT):
        if reference is None:
            reference = [r.clone() for r in predictor.predict(None)]
        for name, quantizer in layers.items():
            active = int(quantizer.groups)
            table = {}
            try:
                quantizer.mode = QuantMode.QUANTIZED
                for groups in quantizer.candidates:
                    quantizer.set_groups(groups)
                    table[groups] = mean_kl(reference, predictor.predict(name))
                    if on_step is not None:
                        on_step()
            finally:
                quantizer.mode = QuantMode.FLOAT
                quantizer.set_groups(active)
            tables[name] = table
    return tables


def apply_allocation(layers: Mapping[str, IGQQuantizer], assignment: Mapping[str, int]) -> None:
    """Set every layer's active group count from an allocation ``{layer: G}``."""
    missing = sorted(set(layers) - set(assignment))
    if missing:
        raise ValueError(f'allocation has no group count for layers {missing[:5]}')
    for name, quantizer in layers.items():
        quantizer.set_groups(int(assignment[name]))
