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
import numbers
from dataclasses import dataclass
from typing import Callable, Iterator, Mapping, Sequence

import torch
from torch import nn

from ..nn.layers import QKVQuantizer
from ..quant import IGQQuantizer, QuantMode, WeightQuantizer, quant_mode
from .sensitivity import FisherPredictor

# the Fisher estimators (everything but 'exact'): they need a FisherPredictor
FISHER_ESTIMATORS = ('fisher', 'fisher-full')
SENSITIVITY_ESTIMATORS = ('exact', *FISHER_ESTIMATORS)
DEFAULT_FISHER_SAMPLES = 4
# the full form needs more draws: its cross-item and cross-element terms cancel only on
# average (tools/allocation_study.py: at S = 4 its tables rank the candidates worse than
# the diagonal's; at S = 16 better)
DEFAULT_FISHER_FULL_SAMPLES = 16
# elements per float64 block of the projections g_s . dx (bounds the float64 copy)
_PROJECTION_BLOCK = 1 << 16


def check_sensitivity(sensitivity: str, fisher_samples: int | None = None
                      ) -> tuple[str, int]:
    """Validate the sensitivity estimator and its sample count (before any forward).

    Args:
        sensitivity: one of :data:`SENSITIVITY_ESTIMATORS`.
        fisher_samples: label draws per item of the Fisher estimators; ``None``: the
            estimator's default (:data:`DEFAULT_FISHER_FULL_SAMPLES` for
            ``'fisher-full'``, else :data:`DEFAULT_FISHER_SAMPLES`).

    Returns:
        ``(sensitivity, fisher_samples)``, the count resolved.

    Raises:
        ValueError: an unknown estimator, or a sample count that is not ``None`` or a
            positive integer.

    Example:
        >>> check_sensitivity('fisher', 8)
        ('fisher', 8)
        >>> check_sensitivity('fisher-full')
        ('fisher-full', 16)
    """
    if not isinstance(sensitivity, str) or sensitivity not in SENSITIVITY_ESTIMATORS:
        raise ValueError(f'sensitivity={sensitivity!r} is not a sensitivity estimator: allowed '
                         f'are {SENSITIVITY_ESTIMATORS}')
    if fisher_samples is None:
        fisher_samples = (DEFAULT_FISHER_FULL_SAMPLES if sensitivity == 'fisher-full'
                          else DEFAULT_FISHER_SAMPLES)
    if isinstance(fisher_samples, bool) or not isinstance(fisher_samples, numbers.Integral) \
            or fisher_samples < 1:
        raise ValueError(f'fisher_samples={fisher_samples!r}: the labels drawn per item (one '
                         f'backward pass each) must be a positive integer')
    return sensitivity, int(fisher_samples)


def sampled_log_likelihood(log_probs: torch.Tensor, samples: int,
                           generator: torch.Generator | None = None) -> torch.Tensor:
    """Per sample, the sum over items of ``log p(y)`` with ``y ~ p`` drawn per item.

    Args:
        log_probs: ``[R, K]`` log-probabilities of R items (differentiable).
        samples: S, label draws per item.
        generator: random source of the draws (on ``log_probs``' device).

    Returns:
        ``[S]``: ``sum_r log_probs[r, y_{r,s}]``; the labels carry no gradient.

    Example:
        >>> log_p = torch.log(torch.tensor([[1.0, 0.0], [0.0, 1.0]]).clamp(min=1e-30))
        >>> sampled_log_likelihood(log_p, 3)
        tensor([0., 0., 0.])
    """
    labels = torch.multinomial(log_probs.detach().float().exp(), samples, replacement=True,
                               generator=generator)  # [R, S]
    return log_probs.gather(1, labels).sum(0)


def _sampled_gradients(log_probs: torch.Tensor, activations: Sequence[torch.Tensor],
                       samples: int, generator: torch.Generator | None
                       ) -> Iterator[tuple[int, tuple[torch.Tensor | None, ...]]]:
    """Per draw s, ``(s, grads)``: the gradients of ``sum_r log p_r(y_{r,s})`` w.r.t.
    ``activations`` (``None`` where ``log_probs`` does not depend on one); the graph is
    kept until the last draw."""
    likelihood = sampled_log_likelihood(log_probs, samples, generator)
    for draw in range(samples):
        yield draw, torch.autograd.grad(likelihood[draw], list(activations),
                                        retain_graph=draw < samples - 1, allow_unused=True)


def diagonal_fisher(log_probs: torch.Tensor, activations: Sequence[torch.Tensor],
                    samples: int, generator: torch.Generator | None = None
                    ) -> list[torch.Tensor | None]:
    """Diagonal Fisher of the items' distributions w.r.t. each of ``activations``.

    Args:
        log_probs: ``[R, K]`` log-probabilities computed from ``activations``.
        activations: tensors of the autograd graph of ``log_probs`` (any shapes).
        samples: S label draws (one backward pass each).
        generator: random source of the draws.

    Returns:
        Per activation, ``mean_s grad_s^2`` (float32, its shape), an unbiased estimate
        of ``sum_r E_{y ~ p_r}[(d log p_r(y) / dx)^2]``; ``None`` where ``log_probs``
        does not depend on it (its Fisher is 0).
    """
    fisher: list[torch.Tensor | None] = [None] * len(activations)
    if not log_probs.requires_grad or not activations:
        return fisher
    for _, grads in _sampled_gradients(log_probs, activations, samples, generator):
        for index, grad in enumerate(grads):
            if grad is None:
                continue
            square = grad.detach().float().square()
            fisher[index] = square if fisher[index] is None else fisher[index].add_(square)
    return [f.div_(samples) if f is not None else None for f in fisher]


def quadratic_kl(fisher: torch.Tensor, delta: torch.Tensor) -> float:
    """Second-order KL of a change ``delta`` under a diagonal Fisher:
    ``1/2 * sum(fisher * delta^2)`` (accumulated in float64).

    Example:
        >>> quadratic_kl(torch.tensor([2.0, 4.0]), torch.tensor([1.0, 0.5]))
        1.5
    """
    return 0.5 * float((fisher.double() * delta.double().square()).sum())


def sampled_scores(log_probs: torch.Tensor, activations: Sequence[torch.Tensor],
                   samples: int, generator: torch.Generator | None = None
                   ) -> list[torch.Tensor | None]:
    """The S sampled scores of the items' distributions w.r.t. each of ``activations``.

    Takes the arguments of :func:`diagonal_fisher` (``log_probs`` ``[R, K]``, S =
    ``samples`` backward passes) and draws the same labels for the same generator state.

    Returns:
        Per activation of shape ``[*A]``, a float32 ``[S, *A]`` tensor whose row s is
        ``g_s = d(sum_r log p_r(y_{r,s})) / dx``, so that ``mean_s g_s g_s^T`` is an
        unbiased estimate of the full Fisher ``sum_r E_{y ~ p_r}[g_r g_r^T]`` (the
        cross-item terms have zero mean); ``None`` where ``log_probs`` does not depend
        on it (its Fisher is 0). ``mean_s g_s^2`` is :func:`diagonal_fisher`.
    """
    scores: list[torch.Tensor | None] = [None] * len(activations)
    if not log_probs.requires_grad or not activations:
        return scores
    for draw, grads in _sampled_gradients(log_probs, activations, samples, generator):
        for index, grad in enumerate(grads):
            if grad is None:  # then in every draw: the graph is the same
                continue
            if scores[index] is None:  # filled row by row: no second [S, *A] copy
                scores[index] = torch.empty((samples, *grad.shape), dtype=torch.float32,
                                            device=grad.device)
            scores[index][draw].copy_(grad.detach())
    return scores


def sampled_quadratic_kl(scores: torch.Tensor, delta: torch.Tensor) -> float:
    """Second-order KL of a change ``delta`` under the sampled full Fisher:
    ``1/2 * mean_s (scores[s] . delta)^2``.

    Args:
        scores: ``[S, *A]`` sampled scores (:func:`sampled_scores`).
        delta: ``[*A]`` the change of the activation.

    The dot products are computed in float64 (block by block, so the float64 copy of
    ``scores`` stays small): ``g_s . dx`` sums millions of terms of both signs, whose
    sum can be far smaller than their magnitudes.

    Example:
        >>> g = torch.tensor([[1.0, 1.0], [1.0, -1.0]])  # mean_s g g^T = I
        >>> sampled_quadratic_kl(g, torch.tensor([1.0, 0.5]))  # 1/2 (1.5^2 + 0.5^2) / 2
        0.625
    """
    if scores.shape[1:] != delta.shape:
        raise ValueError(f'scores {tuple(scores.shape)} do not match the change '
                         f'{tuple(delta.shape)}: expected [S, *change]')
    scores = scores.reshape(scores.shape[0], -1)  # [S, N]
    delta = delta.reshape(-1)  # [N]
    projections = torch.zeros(scores.shape[0], dtype=torch.float64, device=scores.device)
    for start in range(0, delta.numel(), _PROJECTION_BLOCK):
        stop = start + _PROJECTION_BLOCK
        projections += scores[:, start:stop].double() @ delta[start:stop].double()
    return 0.5 * float(projections.square().mean())


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
                                       f'the quantizer; the Fisher search needs it unchanged')
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
