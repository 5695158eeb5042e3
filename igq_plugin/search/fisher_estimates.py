"""Fisher estimates of a KL divergence: pure functions over tensors.

:mod:`.fisher` explains the estimators and applies them to a model; these functions
only see log-probabilities, activations and changes:

- :func:`diagonal_fisher` / :func:`quadratic_kl`: ``1/2 sum(F * dx^2)`` with the
  diagonal Fisher estimated from label draws;
- :func:`sampled_scores` / :func:`sampled_quadratic_kl`: ``1/2 mean_s (g_s . dx)^2``,
  the sampled full form.
"""
from __future__ import annotations

import numbers
from typing import Iterator, Sequence

import torch


# the Fisher estimators (everything but 'exact'): they need a FisherPredictor
FISHER_ESTIMATORS = ('fisher', 'fisher-full')
SENSITIVITY_ESTIMATORS = ('exact', *FISHER_ESTIMATORS)
# On held-out train images of both demo detectors the diagonal Fisher's allocations
# were as good as the exact search's (fidelity and mAP) at 1/20-1/85 of its time
# (docs/studies.md, "Sensitivity estimators"); 'exact' stays the reference option.
DEFAULT_SENSITIVITY = 'fisher'
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


