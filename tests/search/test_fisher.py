"""The ``'fisher'`` and ``'fisher-full'`` sensitivity estimators: the diagonal Fisher is
the expected squared score under sampled labels, the sampled scores estimate the full
Fisher, the tables agree with the exact KL to second order (the full form also where
the quantization errors are correlated, the diagonal one not), and ``calibrate_model``
refuses bad settings before any forward."""
import types

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from igq_plugin import (ClassifierPredictor, FisherPredictor, QuantConfig, calibrate_model,
                        quantize_model)
from igq_plugin.nn import QuantState, igq_quantizers, set_quant_state
from igq_plugin.quant import QuantMode, quant_mode, set_mode
from igq_plugin.search import (DEFAULT_FISHER_FULL_SAMPLES, DEFAULT_FISHER_SAMPLES,
                               SENSITIVITY_ESTIMATORS, check_sensitivity, diagonal_fisher,
                               fisher_tables, kl_divergence, mean_kl, quadratic_kl,
                               sampled_log_likelihood, sampled_quadratic_kl, sampled_scores,
                               sensitivity_tables)
from igq_plugin.search import fisher_estimates as fisher_module

from tests.conftest import vit_like_activations
from tests.toy_models import TinyViT, toy_images


def forward(model, batch):
    return model(batch)


class ElementScorer(nn.Module):
    """Every element of the input alone gives one item's two logits, in each branch.

    Each branch is a depthwise 1x1 conv with two outputs per channel, so the items'
    distributions depend on disjoint elements of the branch's (quantized) input and the
    Fisher with respect to it is exactly diagonal: the second-order KL of a change of
    that input is exactly what the estimator computes. The branches see the same input
    (so they calibrate the same quantizer) and differ by the gain of their weights: the
    high-gain branch is the sensitive one.
    """

    def __init__(self, channels=16, gains=(3.0, 0.3), seed=0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.branches = nn.ModuleList()
        for gain in gains:
            conv = nn.Conv2d(channels, 2 * channels, 1, groups=channels)
            with torch.no_grad():
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen) * gain)
                conv.bias.copy_(torch.randn(conv.bias.shape, generator=gen))
            self.branches.append(conv)

    def forward(self, x):  # [B, C, H, W] -> [branches * B * C * H * W, 2]
        b, c, h, w = x.shape
        return torch.cat([branch(x).view(b, c, 2, h, w).movedim(2, -1).reshape(-1, 2)
                          for branch in self.branches])


def element_scorer(images=3):
    """A calibrated ``ElementScorer`` (4-bit IGQ inputs), its predictor, in the search state."""
    model = ElementScorer().eval()
    quantize_model(model, QuantConfig(method='igq', groups=4, a_bits=4, w_bits=8,
                                      candidates=(1, 2, 4, 8)), first_layers=())
    # channel ranges that vary from image to image, as ViT activations after a LayerNorm
    batches = list(vit_like_activations(images, 64, 16).transpose(1, 2)
                   .reshape(images, 16, 8, 8).split(1))
    predictor = ClassifierPredictor(model, batches, forward)
    calibrate_model(model, batches, forward, predictor=predictor)
    set_quant_state(model, QuantState.CALIBRATING)  # as during the search
    set_mode(model, QuantMode.FLOAT)
    return model, predictor


def scaled_quantization_kl(model, predictor, name, scale):
    """Exact mean KL when only ``name`` changes, by ``scale`` times its quantization error."""
    quantizer = igq_quantizers(model)[name]
    with quant_mode(model, QuantMode.FLOAT), torch.no_grad():
        reference = predictor.predict(None)
        handle = quantizer.register_forward_hook(
            lambda module, inputs, output: inputs[0] + scale * (output - inputs[0]))
        quantizer.mode = QuantMode.QUANTIZED
        try:
            return mean_kl(reference, predictor.predict(name))
        finally:
            quantizer.mode = QuantMode.FLOAT
            handle.remove()


def linear_softmax():
    """5 items, 4 classes, all reading all of ``x`` [6]: ``(x, log_probs [5, 4], F [6, 6])``
    with the exact Fisher ``F = sum_r A_r^T (diag(p_r) - p_r p_r^T) A_r``."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(6, generator=gen).requires_grad_()
    maps = torch.randn(5, 4, 6, generator=gen)
    log_probs = F.log_softmax(maps @ x, dim=-1)
    probs = log_probs.detach().exp()
    covariance = torch.diag_embed(probs) - probs[:, :, None] * probs[:, None, :]
    return x, log_probs, torch.einsum('rki,rkl,rlj->ij', maps, covariance, maps)


def test_diagonal_fisher_is_the_expected_squared_score_of_sampled_labels():
    x, log_probs, full = linear_softmax()
    probs = log_probs.detach().exp()
    exact = full.diagonal()
    # the "empirical" Fisher of the argmax labels is another quantity
    top = log_probs.gather(1, probs.argmax(1, keepdim=True)).sum()
    empirical = torch.autograd.grad(top, x, retain_graph=True)[0].square()
    assert not torch.allclose(empirical, exact, rtol=0.3)
    unused = torch.zeros(3, requires_grad=True)
    estimate, none = diagonal_fisher(log_probs, [x, unused], 4000,
                                     torch.Generator().manual_seed(1))
    torch.testing.assert_close(estimate, exact, rtol=0.1, atol=0.0)
    assert none is None  # not upstream of the log-probabilities: its Fisher is 0


def test_sampled_labels_follow_the_distribution():
    log_probs = torch.log(torch.tensor([[0.25, 0.75]])).expand(20000, 2)
    likelihood = sampled_log_likelihood(log_probs, 1, torch.Generator().manual_seed(0))
    ones = (likelihood.item() - 20000 * torch.log(torch.tensor(0.25)).item()) / torch.log(
        torch.tensor(3.0)).item()  # items that drew class 1
    assert ones / 20000 == pytest.approx(0.75, abs=0.01)
    assert quadratic_kl(torch.tensor([2.0, 4.0]), torch.tensor([1.0, 0.5])) == 1.5


def test_fisher_tables_agree_with_the_exact_kl_to_second_order():
    model, predictor = element_scorer()
    layers = igq_quantizers(model)
    fisher = fisher_tables(model, layers, predictor, samples=256)
    for name, quantizer in layers.items():
        for groups in quantizer.candidates:
            quantizer.set_groups(groups)
            small = scaled_quantization_kl(model, predictor, name, 0.03) / 0.03 ** 2
            assert small == pytest.approx(fisher[name][groups], rel=0.05), (name, groups)
    # at the full 4-bit error the sensitive branch is past second order
    layers['branches.0.input_quantizer'].set_groups(1)
    full = scaled_quantization_kl(model, predictor, 'branches.0.input_quantizer', 1.0)
    assert full > 1.5 * fisher['branches.0.input_quantizer'][1]


def test_fisher_ranks_candidates_and_layers_like_the_exact_search():
    model, predictor = element_scorer()
    layers = igq_quantizers(model)
    exact = sensitivity_tables(model, layers, predictor)
    fisher = fisher_tables(model, layers, predictor, samples=8)
    for name, quantizer in layers.items():
        order = sorted(quantizer.candidates, key=exact[name].get)
        assert sorted(quantizer.candidates, key=fisher[name].get) == order, name
        assert order == sorted(quantizer.candidates, reverse=True)  # more groups, less error
    sensitive, robust = 'branches.0.input_quantizer', 'branches.1.input_quantizer'
    for groups in layers[sensitive].candidates:  # the same error, 10x the gain
        assert exact[sensitive][groups] > 3 * exact[robust][groups]
        assert fisher[sensitive][groups] > 2 * fisher[robust][groups]


def test_sampled_scores_estimate_the_full_fisher_with_the_diagonal_draws():
    x, log_probs, exact = linear_softmax()  # exact: [6, 6], couplings kept
    unused = torch.zeros(3, requires_grad=True)
    scores, none = sampled_scores(log_probs, [x, unused], 4000, torch.Generator().manual_seed(1))
    assert scores.shape == (4000, 6) and scores.dtype == torch.float32 and none is None
    estimate = scores.T @ scores / 4000  # mean_s g_s g_s^T: the cross-item terms average out
    torch.testing.assert_close(estimate, exact, rtol=0.0, atol=0.1 * exact.abs().max().item())
    assert exact.triu(1).abs().max() > 0.3 * exact.diag().min()  # the couplings are not small
    # the same seed draws the same labels as the diagonal estimator: its squares are it
    x, log_probs, _ = linear_softmax()  # a new graph: the last draw freed the first
    diagonal, _ = diagonal_fisher(log_probs, [x, unused], 4000, torch.Generator().manual_seed(1))
    torch.testing.assert_close(scores.square().mean(0), diagonal, rtol=1e-4, atol=0.0)


def test_sampled_quadratic_kl_is_the_mean_squared_projection_in_float64(monkeypatch):
    gen = torch.Generator().manual_seed(0)
    scores, delta = torch.randn(5, 3, 7, generator=gen), torch.randn(3, 7, generator=gen)
    expected = 0.5 * (scores.double().reshape(5, -1) @ delta.double().reshape(-1)).square().mean()
    monkeypatch.setattr(fisher_module, '_PROJECTION_BLOCK', 4)  # 21 elements: 6 blocks
    assert sampled_quadratic_kl(scores, delta) == pytest.approx(float(expected), rel=1e-12)
    # a dot product that cancels: float32 would keep only rounding noise of the 1e8 terms
    big = torch.tensor([[1e8, 1.0, -1e8]])
    assert sampled_quadratic_kl(big, torch.tensor([1.0, 1.0, 1.0])) == 0.5


def kl_after_change(logits_of, x, delta):
    """Exact ``sum_r KL(p_r(x) || p_r(x + delta))`` of a model given as a function."""
    reference = F.softmax(logits_of(x), dim=-1)
    return float(kl_divergence(reference, F.softmax(logits_of(x + delta), dim=-1)).sum())


def test_full_form_ranks_correlated_errors_like_the_exact_kl_where_the_diagonal_does_not():
    # 8 items whose logits read only the sum of the 64 elements: F = c 1 1^T (rank one)
    gen = torch.Generator().manual_seed(0)
    weights, bias = torch.randn(8, 2, generator=gen), torch.randn(8, 2, generator=gen)
    logits_of = lambda x: weights * x.sum() / 8 + bias  # noqa: E731
    x = torch.randn(64, generator=gen).requires_grad_()
    log_probs = F.log_softmax(logits_of(x), dim=-1)
    # a small error shared by all elements (a group's rounding bias) ...
    biased = torch.full((64,), 0.01)
    # ... and 3x larger errors of both signs that cancel in the sum
    signs = torch.tensor([1.0, -1.0]).repeat(32)[torch.randperm(64, generator=gen)]
    cancelling = 0.03 * signs
    exact = [kl_after_change(logits_of, x.detach(), d) for d in (biased, cancelling)]
    assert exact[1] < 1e-4 * exact[0]  # the model sees only the sum (float32 rounding)
    scores, = sampled_scores(log_probs, [x], 256, torch.Generator().manual_seed(1))
    full = [sampled_quadratic_kl(scores, d) for d in (biased, cancelling)]
    diagonal = [quadratic_kl(scores.square().mean(0), d) for d in (biased, cancelling)]
    assert full[0] > full[1] and full[0] == pytest.approx(exact[0], rel=0.3)
    assert diagonal[0] < diagonal[1]  # ranks them the other way round
    assert full[1] < 1e-9 * full[0]


class SumScorer(nn.Module):
    """Every pixel is one item whose two logits read only the sum of its channels.

    ``F`` with respect to a pixel's channels is rank one (``c 1 1^T``): the exact
    second-order KL is ``1/2 c (sum_c dx_c)^2`` per pixel. The input repeats each of
    four channel profiles four times, so the repeated channels share their range, their
    group and their rounding error, and the errors add up in the sum (the diagonal's
    ``sum_c dx_c^2`` misses that).
    """

    def __init__(self, channels=16, gain=0.5):
        super().__init__()
        self.score = nn.Conv2d(channels, 2, 1)
        with torch.no_grad():
            self.score.weight.copy_(torch.tensor([gain, -gain]).view(2, 1, 1, 1)
                                    .expand(2, channels, 1, 1))
            self.score.bias.copy_(torch.tensor([0.3, -0.3]))

    def forward(self, x):  # [B, C, H, W] -> [B * H * W, 2]
        return self.score(x).permute(0, 2, 3, 1).reshape(-1, 2)


def sum_scorer(images=3):
    """A calibrated ``SumScorer`` (4-bit IGQ input), its predictor, in the search state."""
    model = SumScorer().eval()
    quantize_model(model, QuantConfig(method='igq', groups=2, a_bits=4, w_bits=8,
                                      candidates=(1, 2, 4)), first_layers=())
    profiles = vit_like_activations(images, 64, 4).transpose(1, 2)  # [I, 4, 64]
    batches = list(profiles.repeat_interleave(4, dim=1).reshape(images, 16, 8, 8).split(1))
    predictor = ClassifierPredictor(model, batches, forward)
    calibrate_model(model, batches, forward, predictor=predictor)
    set_quant_state(model, QuantState.CALIBRATING)
    set_mode(model, QuantMode.FLOAT)
    return model, predictor


def test_fisher_full_tables_agree_with_the_exact_kl_where_the_errors_are_correlated():
    model, predictor = sum_scorer()
    name, = igq_quantizers(model)
    quantizer = igq_quantizers(model)[name]
    # the cross-item terms cancel only on average: many draws for a 10 % tolerance
    full = fisher_tables(model, {name: quantizer}, predictor, samples=2048, full=True)[name]
    diagonal = fisher_tables(model, {name: quantizer}, predictor, samples=64)[name]
    for groups in quantizer.candidates:
        quantizer.set_groups(groups)
        # G = 1's error is large: at 3 % of it the KL is still 6 % above second order
        small = scaled_quantization_kl(model, predictor, name, 0.01) / 0.01 ** 2
        assert full[groups] == pytest.approx(small, rel=0.1), groups
        # four equal errors per sum: the diagonal sees a quarter of the divergence
        assert diagonal[groups] < 0.5 * small, groups


def test_fisher_full_ranks_candidates_and_layers_like_the_exact_search():
    model, predictor = element_scorer()
    layers = igq_quantizers(model)
    exact = sensitivity_tables(model, layers, predictor)
    full = fisher_tables(model, layers, predictor, samples=32, full=True)
    for name, quantizer in layers.items():
        order = sorted(quantizer.candidates, key=exact[name].get)
        assert sorted(quantizer.candidates, key=full[name].get) == order, name
    sensitive, robust = 'branches.0.input_quantizer', 'branches.1.input_quantizer'
    for groups in layers[sensitive].candidates:
        assert full[sensitive][groups] > 2 * full[robust][groups]


@pytest.mark.parametrize('full', [False, True])
def test_fisher_tables_reproducible_and_leave_the_model_as_they_found_it(full):
    model, predictor = element_scorer(images=2)
    layers = igq_quantizers(model)
    groups = {name: int(q.groups) for name, q in layers.items()}
    first = fisher_tables(model, layers, predictor, samples=2, seed=3, full=full)
    assert fisher_tables(model, layers, predictor, samples=2, seed=3, full=full) == first
    assert fisher_tables(model, layers, predictor, samples=2, seed=4, full=full) != first
    assert all(p.requires_grad and p.grad is None for p in model.parameters())
    assert {name: int(q.groups) for name, q in layers.items()} == groups
    assert all(q.mode is QuantMode.FLOAT and not q._forward_hooks for q in layers.values())
    assert all(m.mode is QuantMode.FLOAT for m in model.modules() if hasattr(m, 'mode'))


def tiny_vit_batches():
    return list(toy_images(4).split(2))


@pytest.mark.parametrize('sensitivity', ['fisher', 'fisher-full'])
def test_calibrate_with_fisher_allocates_every_layer_of_a_vit(sensitivity):
    model = TinyViT().eval()
    quantize_model(model, QuantConfig(method='igq', groups=4))
    batches = tiny_vit_batches()
    predictor = ClassifierPredictor(model, batches, forward)
    assert isinstance(predictor, FisherPredictor)
    steps = []
    report = calibrate_model(model, batches, forward, predictor=predictor,
                             progress=lambda n: types.SimpleNamespace(
                                 update=lambda: steps.append(n)),
                             sensitivity=sensitivity, fisher_samples=2)
    assert report.sensitivity == sensitivity
    assert steps == [len(batches)] * len(batches)  # one step per calibration image
    assert report.allocated_gbops <= report.budget_gbops
    layers = igq_quantizers(model)
    assert set(report.allocation) == set(layers)
    rows = {row['layer']: row for row in report.rows}
    # Q, K, V operands and the softmax included: every layer feeds the class scores
    assert any(n.endswith('softmax.quantizer') for n in layers)
    assert any(n.endswith('output_quantizer.k') for n in layers)
    assert not report.unmeasured
    assert all(rows[n]['sensitivity'] for n in layers)
    assert all(p.requires_grad and p.grad is None for p in model.parameters())
    with torch.no_grad():
        model(batches[0])  # READY and quantized: the guard lets it run


class CountingForward:
    def __init__(self):
        self.calls = 0

    def __call__(self, model, batch):
        self.calls += 1
        return model(batch)


class ProbabilitiesOnly:
    """A predictor without ``log_probs``: enough for the exact search only."""

    def __init__(self, model, batches):
        self.inner = ClassifierPredictor(model, batches, forward)

    def predict(self, layer):
        return self.inner.predict(layer)


@pytest.mark.parametrize('kwargs,error,match', [
    (dict(sensitivity='fsher'), ValueError,
     r"sensitivity='fsher'.*\('exact', 'fisher', 'fisher-full'\)"),
    (dict(sensitivity='fisher_full'), ValueError, r"sensitivity='fisher_full'.*allowed are"),
    (dict(sensitivity='full'), ValueError, 'allowed are'),
    (dict(sensitivity=None), ValueError, 'allowed are'),
    (dict(sensitivity='fisher', fisher_samples=0), ValueError, 'fisher_samples=0'),
    (dict(sensitivity='fisher', fisher_samples=2.0), ValueError, 'positive integer'),
    (dict(sensitivity='fisher', fisher_samples=True), ValueError, 'fisher_samples=True'),
    (dict(sensitivity='fisher-full', fisher_samples=-3), ValueError, 'fisher_samples=-3'),
    (dict(sensitivity='fisher-full', fisher_samples='4'), ValueError, 'positive integer'),
    (dict(sensitivity='fisher', probabilities_only=True), TypeError, 'log_probs'),
    (dict(sensitivity='fisher-full', probabilities_only=True), TypeError,
     "sensitivity='fisher-full' needs a predictor with log_probs"),
])
def test_bad_sensitivity_settings_refused_before_any_forward(kwargs, error, match):
    model = TinyViT().eval()
    quantize_model(model, QuantConfig(method='igq', groups=4))
    batches = tiny_vit_batches()
    counting = CountingForward()
    predictor = (ProbabilitiesOnly if kwargs.pop('probabilities_only', False)
                 else lambda m, b: ClassifierPredictor(m, b, counting))(model, batches)
    with pytest.raises(error, match=match):
        calibrate_model(model, batches, counting, predictor=predictor, **kwargs)
    assert counting.calls == 0


def test_check_sensitivity_and_fisher_tables_refuse_what_they_cannot_use():
    assert SENSITIVITY_ESTIMATORS == ('exact', 'fisher', 'fisher-full')  # 'exact' first
    assert check_sensitivity('exact', 1) == ('exact', 1)
    assert check_sensitivity('fisher-full', 8) == ('fisher-full', 8)
    # None: the estimator's default; the full form needs more draws than the diagonal
    assert check_sensitivity('fisher') == ('fisher', DEFAULT_FISHER_SAMPLES) == ('fisher', 4)
    assert check_sensitivity('fisher-full', None) == ('fisher-full', DEFAULT_FISHER_FULL_SAMPLES)
    assert DEFAULT_FISHER_FULL_SAMPLES > DEFAULT_FISHER_SAMPLES
    model, predictor = element_scorer(images=1)
    layers = igq_quantizers(model)
    with pytest.raises(TypeError, match="sensitivity='fisher' needs .*log_probs"):
        fisher_tables(model, layers, ProbabilitiesOnly(model, predictor.batches))
    with pytest.raises(TypeError, match="sensitivity='fisher-full' needs .*log_probs"):
        fisher_tables(model, layers, ProbabilitiesOnly(model, predictor.batches), full=True)
    with pytest.raises(ValueError, match='fisher_samples=-1'):
        fisher_tables(model, layers, predictor, samples=-1)
    with pytest.raises(ValueError, match='fisher_samples=0'):
        fisher_tables(model, layers, predictor, samples=0, full=True)
    with pytest.raises(ValueError, match=r'expected \[S, \*change\]'):
        sampled_quadratic_kl(torch.ones(4, 3), torch.ones(4))


class InPlaceAfterQuantizer(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        out = self.fc(x)
        x.mul_(2)  # changes the activation the quantizer saw
        return out


def test_an_activation_changed_in_place_is_an_error_not_a_wrong_table():
    model = InPlaceAfterQuantizer().eval()
    quantize_model(model, QuantConfig(method='igq', groups=2, candidates=(1, 2)),
                   first_layers=())
    batches = [torch.randn(8, 4) for _ in range(2)]
    clone_forward = lambda m, b: m(b.clone())  # noqa: E731
    predictor = ClassifierPredictor(model, batches, clone_forward)
    with pytest.raises(RuntimeError, match="changed in place.*use sensitivity='exact'"):
        calibrate_model(model, batches, clone_forward, predictor=predictor)  # the default
    calibrate_model(model, batches, clone_forward, predictor=predictor, sensitivity='exact')
    set_quant_state(model, QuantState.CALIBRATING)
    with pytest.raises(RuntimeError, match='fc.input_quantizer: its input was changed in place'):
        fisher_tables(model, igq_quantizers(model), predictor, samples=1)
