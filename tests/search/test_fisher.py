"""The ``'fisher'`` sensitivity estimator: the diagonal Fisher is the expected squared
score under sampled labels, the tables agree with the exact KL to second order, and
``calibrate_model`` refuses bad settings before any forward."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from igq_plugin import (ClassifierPredictor, FisherPredictor, QuantConfig, calibrate_model,
                        quantize_model)
from igq_plugin.nn import QuantState, igq_quantizers, set_quant_state
from igq_plugin.quant import QuantMode, quant_mode, set_mode
from igq_plugin.search import (check_sensitivity, diagonal_fisher, fisher_tables, mean_kl,
                               quadratic_kl, sampled_log_likelihood, sensitivity_tables)

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


def test_diagonal_fisher_is_the_expected_squared_score_of_sampled_labels():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(6, generator=gen).requires_grad_()
    maps = torch.randn(5, 4, 6, generator=gen)  # 5 items, 4 classes, all reading all of x
    log_probs = F.log_softmax(maps @ x, dim=-1)  # [5, 4]
    probs = log_probs.detach().exp()
    # sum over items of A_r^T (diag(p_r) - p_r p_r^T) A_r, its diagonal
    covariance = torch.diag_embed(probs) - probs[:, :, None] * probs[:, None, :]
    exact = torch.einsum('rki,rkl,rli->i', maps, covariance, maps)
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


def test_fisher_tables_reproducible_and_leave_the_model_as_they_found_it():
    model, predictor = element_scorer(images=2)
    layers = igq_quantizers(model)
    groups = {name: int(q.groups) for name, q in layers.items()}
    first = fisher_tables(model, layers, predictor, samples=2, seed=3)
    assert fisher_tables(model, layers, predictor, samples=2, seed=3) == first
    assert fisher_tables(model, layers, predictor, samples=2, seed=4) != first
    assert all(p.requires_grad and p.grad is None for p in model.parameters())
    assert {name: int(q.groups) for name, q in layers.items()} == groups
    assert all(q.mode is QuantMode.FLOAT and not q._forward_hooks for q in layers.values())
    assert all(m.mode is QuantMode.FLOAT for m in model.modules() if hasattr(m, 'mode'))


def tiny_vit_batches():
    return list(toy_images(4).split(2))


def test_calibrate_with_fisher_allocates_every_layer_of_a_vit():
    model = TinyViT().eval()
    quantize_model(model, QuantConfig(method='igq', groups=4))
    batches = tiny_vit_batches()
    predictor = ClassifierPredictor(model, batches, forward)
    assert isinstance(predictor, FisherPredictor)
    report = calibrate_model(model, batches, forward, predictor=predictor,
                             sensitivity='fisher', fisher_samples=2)
    assert report.sensitivity == 'fisher'
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
    (dict(sensitivity='fsher'), ValueError, r"sensitivity='fsher'.*\('exact', 'fisher'\)"),
    (dict(sensitivity=None), ValueError, 'allowed are'),
    (dict(sensitivity='fisher', fisher_samples=0), ValueError, 'fisher_samples=0'),
    (dict(sensitivity='fisher', fisher_samples=2.0), ValueError, 'positive integer'),
    (dict(sensitivity='fisher', fisher_samples=True), ValueError, 'fisher_samples=True'),
    (dict(sensitivity='fisher', probabilities_only=True), TypeError, 'log_probs'),
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
    assert check_sensitivity('exact', 1) == ('exact', 1)
    model, predictor = element_scorer(images=1)
    layers = igq_quantizers(model)
    with pytest.raises(TypeError, match='log_probs'):
        fisher_tables(model, layers, ProbabilitiesOnly(model, predictor.batches))
    with pytest.raises(ValueError, match='fisher_samples=-1'):
        fisher_tables(model, layers, predictor, samples=-1)


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
    calibrate_model(model, batches, clone_forward, predictor=predictor)
    set_quant_state(model, QuantState.CALIBRATING)
    with pytest.raises(RuntimeError, match='fc.input_quantizer: its input was changed in place'):
        fisher_tables(model, igq_quantizers(model), predictor, samples=1)
