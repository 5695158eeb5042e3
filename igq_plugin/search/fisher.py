"""Fisher estimate of the sensitivity tables Omega_l(G) (docs/method.md, section 5).

The exact search measures ``KL(p_float || p_{l,G})`` with one (partial) forward per
(layer, candidate G). For a small change ``dx`` of layer l's activation ``x_l`` the
divergence is, to second order, ``1/2 dx^T F_l dx``, where ``F_l`` is the Fisher
information of the model's output distribution with respect to ``x_l``. This module
estimates the diagonal of every ``F_l`` from one float forward and a few backward
passes per calibration image, then scores every candidate G of every layer from the
cached activation alone::

    Omega_l(G) ~= 1/2 * sum(F_l * (fakequant_G(x_l) - x_l)^2) / R

(``R`` items of the image: RoIs, pixels or images of a batch; then the mean over the
calibration images, the normalisation of :func:`~.sensitivity.mean_kl`).

The Fisher is ``E_{y ~ p}[g g^T]`` with ``g`` the gradient of ``log p(y)``, so the labels
are *sampled* from the float model's own distribution: with the argmax (or ground-truth)
labels instead it would be the biased "empirical" Fisher (the squared score of one fixed
label), not the curvature of the KL the exact search measures. The gradient of the sum over items is back-propagated once per
sample: the cross terms between items average out, since ``E_y[g_r] = 0`` for every
item, so ``mean_s (sum_r g_r)^2`` estimates ``sum_r E[g_r^2]``.

The diagonal drops the Fisher's couplings between elements. That is exact only where
the quantization errors of different elements are independent and zero-mean, and they
are not quite (a group's rounding and clipping err alike across its members, and a
softmax row's small probabilities all round towards zero): this, more than the few
label draws or the terms beyond second order, is where the estimate departs from the
exact tables (``tools/allocation_study.py --variants calib fisher`` measures the
agreement and the resulting allocations).

The ``'fisher-full'`` estimator keeps the couplings. It stores the S sampled scores
``g_s`` (the gradient of ``sum_r log p_r(y_{r,s})``) instead of their squares and scores
every candidate by the sampled quadratic form::

    Omega_l(G) ~= 1/2 * mean_s (g_s . dx)^2 / R,    dx = fakequant_G(x_l) - x_l

Since ``E[g_s g_s^T] = F_l`` (the cross-item terms ``g_r g_q^T``, r != q, have zero mean)
this is an unbiased estimate of ``1/2 dx^T F_l dx`` with every off-diagonal term, at
the same forward and backward passes as the diagonal; the price is variance (the
cross-item and cross-element terms cancel only on average over the draws) and memory
(S gradients per captured activation instead of one diagonal).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterator, Mapping

import torch
from torch import nn

from ..nn.layers import QKVQuantizer
from ..quant import QuantMode, quant_mode
from ..quantizers import IGQQuantizer, WeightQuantizer
from .sensitivity import FisherPredictor
from .fisher_estimates import (check_sensitivity,
                               diagonal_fisher, quadratic_kl, sampled_quadratic_kl, sampled_scores)


@dataclass
class _Capture:
    """One call of an IGQ quantizer during the float forward.

    ``tap`` is the tensor that replaced the quantizer's output in the graph (the
    gradient is taken with respect to it); ``part`` selects Q, K or V (0, 1, 2) of a
    fused ``qkv`` tap; ``version`` detects a later in-place change of the activation.
    """

    name: str
    quantizer: IGQQuantizer
    tap: torch.Tensor
    part: int | None
    num_instances: int | None
    version: int

    def select(self, tensor: torch.Tensor) -> torch.Tensor:
        """This quantizer's slice of a tensor shaped like ``tap``."""
        return tensor if self.part is None else tensor.chunk(3, dim=-1)[self.part]


def _tap(x: torch.Tensor) -> torch.Tensor:
    """A new graph node equal to ``x`` (no copy) whose gradient is only that of the
    consumers of the quantizer's output."""
    # with frozen parameters the first tapped activation is not in any graph yet
    return x.view_as(x) if x.requires_grad else x.detach().requires_grad_()


@contextlib.contextmanager
def _frozen_parameters(model: nn.Module) -> Iterator[None]:
    """No parameter requires grad: backward computes activation gradients only, the
    graph keeps no inputs for weight gradients, and no ``.grad`` is written."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for parameter, _ in flags:
            parameter.requires_grad_(False)
        yield
    finally:
        for parameter, flag in flags:
            parameter.requires_grad_(flag)


@contextlib.contextmanager
def _explicit_float(model: nn.Module) -> Iterator[None]:
    """Every quantizer computes float, and attention runs its explicit path.

    An attention adapter runs the module's fused float kernel while none of its
    quantizers is active, so its softmax and Q/K/V quantizers would never see a tensor.
    A weight quantizer in ``CALIBRATE`` mode returns the weight unchanged and records
    nothing: it keeps the explicit path (the one the exact search measures) without
    changing a value.
    """
    with quant_mode(model, QuantMode.FLOAT):
        for module in model.modules():
            if isinstance(module, WeightQuantizer):
                module.mode = QuantMode.CALIBRATE
        yield


@contextlib.contextmanager
def captured_activations(model: nn.Module, layers: Mapping[str, IGQQuantizer]
                         ) -> Iterator[list[_Capture]]:
    """Float forwards that record every input of ``layers`` and make it a gradient target.

    Inside the block the model computes float (:func:`_explicit_float`) with frozen
    parameters; every call of a quantizer in ``layers`` appends a :class:`_Capture` to
    the yielded list (the caller empties it between images). Q/K/V quantizers of a fused
    ``qkv`` are skipped by their :class:`~igq_plugin.nn.QKVQuantizer` while float, so
    they are captured there, as the three thirds of one tap.
    """
    captures: list[_Capture] = []
    names = {id(q): n for n, q in layers.items()}
    handles = []

    def on_quantizer(module, inputs, output):
        x = inputs[0]
        if x.numel() == 0:
            return None
        tap = _tap(x)
        captures.append(_Capture(names[id(module)], module, tap, None, module.num_instances,
                                 tap._version))
        return tap

    def on_qkv(module, inputs, output):
        parts = [(i, q) for i, q in enumerate((module.q, module.k, module.v))
                 if id(q) in names]
        if output.numel() == 0 or not parts:
            return None
        tap = _tap(output)
        captures.extend(_Capture(names[id(q)], q, tap, i, q.num_instances, tap._version)
                        for i, q in parts)
        return tap

    try:
        fused = set()
        for module in model.modules():
            if isinstance(module, QKVQuantizer):
                handles.append(module.register_forward_hook(on_qkv))
                fused.update(id(q) for q in (module.q, module.k, module.v))
        for quantizer in layers.values():
            if id(quantizer) not in fused:
                handles.append(quantizer.register_forward_hook(on_quantizer))
        with _explicit_float(model), _frozen_parameters(model):
            yield captures
    finally:
        for handle in handles:
            handle.remove()
        captures.clear()


def _candidate_deltas(capture: _Capture) -> Iterator[tuple[int, torch.Tensor]]:
    """``(G, fakequant_G(x) - x)`` of one captured call for every candidate G, one at a
    time (float32, shaped like the quantizer's input); the quantizer's state is restored
    when the iteration ends."""
    quantizer = capture.quantizer
    x = capture.select(capture.tap.detach())
    active, instances = int(quantizer.groups), quantizer.num_instances
    try:
        quantizer.num_instances = capture.num_instances  # as in the call
        with torch.no_grad():
            for groups in quantizer.candidates:
                quantizer.set_groups(groups)
                yield groups, quantizer.quantize(x).float() - x.float()
    finally:
        quantizer.set_groups(active)
        quantizer.num_instances = instances


def _candidate_kls(capture: _Capture, fisher: torch.Tensor) -> dict[int, float]:
    """``1/2 sum(F (fakequant_G(x) - x)^2)`` of one captured call, for every candidate G;
    ``fisher`` is the diagonal ``[*tap]``, its slice of this quantizer taken here."""
    fisher = capture.select(fisher)
    return {groups: quadratic_kl(fisher, delta) for groups, delta in _candidate_deltas(capture)}


def _candidate_full_kls(capture: _Capture, scores: torch.Tensor) -> dict[int, float]:
    """``1/2 mean_s (g_s . (fakequant_G(x) - x))^2`` of one captured call, for every
    candidate G; ``scores`` is ``[S, *tap]``, its slice of this quantizer taken here."""
    # one contiguous [S, *x] copy per call (a strided Q/K/V third), not one per candidate
    scores = capture.select(scores).contiguous()
    return {groups: sampled_quadratic_kl(scores, delta)
            for groups, delta in _candidate_deltas(capture)}


def fisher_tables(model: nn.Module, layers: Mapping[str, IGQQuantizer],
                  predictor: FisherPredictor, samples: int | None = None,
                  seed: int = 0, on_step: Callable[[], None] | None = None, *,
                  full: bool = False) -> dict[str, dict[int, float]]:
    """Sensitivity tables from the Fisher: its diagonal (the ``'fisher'`` estimator) or,
    with ``full=True``, the sampled full quadratic form (``'fisher-full'``).

    Per calibration image: one float forward with every quantizer input of ``layers``
    captured, ``samples`` backward passes to all of them at once, then every candidate
    of every layer scored from the cached activation: ``1/2 sum(F * dx^2)`` with the
    diagonal ``F`` (:func:`diagonal_fisher`), or ``1/2 mean_s (g_s . dx)^2`` with the
    S sampled scores (:func:`sampled_scores`, :func:`sampled_quadratic_kl`). Only one
    image's graph, activations and Fisher diagonals (or ``[S, *activation]`` scores)
    are alive at a time.

    Args:
        model: the model holding ``layers`` (computed float throughout).
        layers: calibrated IGQ quantizers by name.
        predictor: differentiable log-probabilities of the calibration images
            (:class:`~.sensitivity.FisherPredictor`).
        samples: S label draws per image (S backward passes); ``None``: the
            estimator's default (:func:`check_sensitivity`).
        seed: seed of the label draws (the tables are reproducible; both forms draw
            the same labels for the same seed).
        on_step: called after every calibration image (progress reporting).
        full: score with the sampled full Fisher (couplings kept) instead of its
            diagonal; S times the diagonal's memory for the per-image gradients.

    Returns:
        ``{layer: {G: Omega}}`` for every candidate G of every layer, on the scale of
        :func:`~.sensitivity.sensitivity_tables`; a layer the predictions do not depend
        on gets 0 for every G.

    Raises:
        TypeError: ``predictor`` has no ``log_probs``.
        ValueError: a bad ``samples`` (see :func:`check_sensitivity`), a predictor that
            yields no image, or log-probabilities that are not ``[R, K]``.
        RuntimeError: a captured activation was changed in place after the quantizer.
    """
    estimator = 'fisher-full' if full else 'fisher'
    _, samples = check_sensitivity(estimator, samples)
    if not isinstance(predictor, FisherPredictor):
        raise TypeError(f"sensitivity={estimator!r} needs a predictor with log_probs() "
                        f'(differentiable log-probabilities); {type(predictor).__name__} has '
                        f'none')
    estimate, score = (sampled_scores, _candidate_full_kls) if full else \
        (diagonal_fisher, _candidate_kls)
    sums = {name: dict.fromkeys(q.candidates, 0.0) for name, q in layers.items()}
    images, generator = 0, None
    with captured_activations(model, layers) as captures, torch.enable_grad():
        for log_probs in predictor.log_probs():
            if log_probs.dim() != 2:
                raise ValueError(f'log_probs() must yield [R, K] tensors; got shape '
                                 f'{tuple(log_probs.shape)}')
            images += 1
            for capture in captures:
                if capture.tap._version != capture.version:
                    raise RuntimeError(f'{capture.name}: its input was changed in place after '
                                       f'the quantizer; the Fisher search needs it unchanged: '
                                       f"use sensitivity='exact' for this model")
            items = log_probs.shape[0]
            if items:
                if generator is None:
                    generator = torch.Generator(device=log_probs.device).manual_seed(seed)
                taps = list({id(c.tap): c.tap for c in captures}.values())
                # per tap: the diagonal [*tap] or the S scores [S, *tap]
                fisher = dict(zip(map(id, taps), estimate(log_probs, taps, samples,
                                                          generator)))
                for capture in captures:
                    estimated = fisher[id(capture.tap)]
                    if estimated is None:
                        continue
                    table = sums[capture.name]
                    for groups, kl in score(capture, estimated).items():
                        table[groups] += kl / items
                del fisher, taps
            captures.clear()
            del log_probs
            if on_step is not None:
                on_step()
    if images == 0:
        raise ValueError('the predictor yielded no calibration image')
    return {name: {g: v / images for g, v in table.items()} for name, table in sums.items()}
