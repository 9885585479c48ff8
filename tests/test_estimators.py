"""Each estimator on a case whose answer is known exactly (or in the limit, with a tolerance)."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from della.config import ConfigError, EvalConfig
from della.estimators import (TooFewExamples, active_units, bootstrap_stderr, gaussian_neg_entropy, iw_batch,
                              iw_row_bytes, iw_rows, mutual_information, path_averaged_means,
                              path_mean_noise)
from della.models.base import gaussian_kl, gaussian_log_density
from tests.conftest import random_batch, tiny_model


def test_gaussian_kl_and_density_match_torch_distributions():
    torch.manual_seed(0)
    mq, mp, lq, lp = (torch.randn(5, 7) for _ in range(4))
    q, p = Normal(mq, torch.exp(0.5 * lq)), Normal(mp, torch.exp(0.5 * lp))
    assert torch.allclose(gaussian_kl(mq, lq, mp, lp), kl_divergence(q, p).sum(-1), atol=1e-5)
    z = torch.randn(5, 7)
    assert torch.allclose(gaussian_log_density(z, mq, lq), q.log_prob(z).sum(-1), atol=1e-5)
    assert torch.allclose(gaussian_neg_entropy(lq), -q.entropy().sum(-1), atol=1e-5)


def test_della_kl_is_the_closed_form_between_its_posterior_and_prior_on_the_sampled_path():
    model = tiny_model("della", first_prior="learned")
    features = model.encode(*random_batch())
    torch.manual_seed(3)
    post = model.sample_posterior(features, k=2)
    z = post.z.flatten(0, 1)  # (K*B, G, p)
    prior_mean, prior_logvar = model.prior_along(z)
    for g in range(model.n_groups):
        pm, pl = prior_mean[:, g], prior_logvar[:, g]
        q = Normal(post.mean.flatten(0, 1)[:, g], torch.exp(0.5 * post.logvar.flatten(0, 1)[:, g]))
        p = Normal(pm, torch.exp(0.5 * pl))
        assert torch.allclose(post.kl.flatten(0, 1)[:, g], kl_divergence(q, p).sum(-1), atol=1e-4)
        assert torch.allclose(post.log_p.flatten(0, 1)[:, g], p.log_prob(z[:, g]).sum(-1), atol=1e-4)


@pytest.mark.parametrize("name", ["embed", "della"])
def test_pairwise_log_q_matches_the_sampled_posterior_on_the_diagonal(name):
    """log q(z_i | x_j) re-runs only the heads along z_i's path; for j = i it must equal the
    density the sampler computed, which validates the hierarchical MI's inner term."""
    model = tiny_model(name, first_prior="learned") if name == "della" else tiny_model(name)
    features = model.encode(*random_batch())
    post = model.sample_posterior(features, k=1)
    matrix = model.log_q_matrix(post.z[0], features)
    assert torch.allclose(torch.diagonal(matrix), post.log_q[0].sum(-1), atol=1e-4)


def test_gpt2_iw_ppl_is_the_exact_perplexity():
    model = tiny_model("gpt2")
    ids, mask = random_batch()
    est = iw_batch(model, ids, mask, k=7)
    logits, _ = model.decode(ids, torch.zeros(4, 0, 0))
    logp = logits.log_softmax(-1)[:, :-1].gather(2, ids[:, 1:, None]).squeeze(2)
    assert torch.allclose(est.log_marginal, (logp * mask[:, 1:]).sum(1), atol=1e-5)


def _ignore_latent(model):
    """Cut every path from z to the decoder's output, so log p(x|z) = log p(x) for all z."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.startswith(("latent_to_", "bow")):
                param.zero_()
            if name.endswith("latent_weight"):
                param[..., :-1] = 0  # keep the constant column: the factor is non-zero but z-free
    return model


@pytest.mark.parametrize("name", ["embed", "memory", "softmax", "della"])
def test_iw_nll_equals_the_lm_nll_when_the_posterior_is_the_prior(name):
    model = _ignore_latent(tiny_model(name))
    ids, mask = random_batch()
    with torch.no_grad():  # q = p exactly: every importance weight is p(x)
        if name == "della":
            for g in range(model.n_groups):
                model.recog_x[g].weight.zero_(), model.recog_x[g].bias.zero_()
                model.recog_h[g].weight.copy_(model.prior[g].weight)
                model.recog_x[g].bias.copy_(model.prior[g].bias)
        else:
            model.to_posterior.weight.zero_(), model.to_posterior.bias.zero_()
    est = iw_batch(model, ids, mask, k=5)
    lm = -model.token_nll(ids, mask, model.sample_prior(4))
    assert torch.allclose(est.log_marginal, lm, atol=1e-4)


@pytest.mark.parametrize("name", ["embed", "della"])
def test_iw_nll_converges_to_the_lm_nll_when_the_decoder_ignores_z(name):
    """q != p, so each weight is p(x) p(z)/q(z); their mean tends to p(x) as K grows."""
    model = _ignore_latent(tiny_model(name, first_prior="learned") if name == "della" else tiny_model(name))
    with torch.no_grad():  # a posterior a little away from the prior
        for param in model.parameters():  # the posterior and prior heads (2p, n_in), DELLA's stacked per group
            if param.dim() in (2, 3) and param.shape[-2] == 2 * model.latent_size:
                param.mul_(2.0)
    ids, mask = random_batch()
    lm = -model.token_nll(ids, mask, model.sample_prior(4))
    torch.manual_seed(0)
    gaps = [(iw_batch(model, ids, mask, k=k).log_marginal - lm).abs().max().item() for k in (1, 4000)]
    assert gaps[1] < 0.02 and gaps[1] < gaps[0]
    if name == "della":  # the official layer-averaged estimator stays biased at large K
        biased = iw_batch(model, ids, mask, k=4000).log_marginal_layer_mean
        assert (biased - lm).abs().min().item() > 0.005


def test_active_units_counts_dimensions_whose_posterior_mean_varies():
    g = torch.Generator().manual_seed(0)
    stds = torch.tensor([0.0, 0.05, 0.3, 1.0, 2.0])  # variances 0, .0025, .09, 1, 4
    means = torch.randn(20000, 1, 5, generator=g) * stds
    assert active_units(means, 0.2).tolist() == [[False, False, False, True, True]]
    assert active_units(means, 0.01).tolist() == [[False, False, True, True, True]]


def _della_with_known_means(p: int = 8):
    """Two latent layers. Layer 1: mean = (f_0, f_1, 0.3 f_2, 0, ...) of the features f, variance 1.
    Layer 2: mean = 3 tanh(z_1) on dims 3.. and 0 elsewhere, whatever x: E_q[z_2 | x] is the same
    for every x (z_1's dims 3.. are N(0, 1) for all x), but one path's mean is a noisy draw."""
    model = tiny_model("della", begin_layer=1, end_layer=2, latent_size=p)
    with torch.no_grad():
        for param in model.parameters():
            param.zero_()
        for dim, scale in ((0, 1.0), (1, 1.0), (2, 0.3)):
            model.recog_x[0].weight[dim, dim] = scale
        model.cell_ih[1].weight.copy_(torch.diag((torch.arange(p) >= 3).float()))
        model.recog_h[1].weight[:p].copy_(3 * torch.eye(p))
    return model


def test_active_units_on_path_averaged_means_of_a_model_whose_means_are_known():
    """Layer 1: Var_x E_q[z|x] = 1, 1, 0.09 on dims 0-2; layer 2: 0 everywhere. At K = 30 the path
    noise of layer 2's averages (variance 3.5 / K = 0.12 per dim) exceeds 0.01 unless subtracted."""
    model = _della_with_known_means()
    features = torch.randn(1000, 2, model.backbone.n_embd, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    with torch.no_grad():
        post = model.sample_posterior(features, k=30)
    averaged, noise = path_averaged_means(post), path_mean_noise(post)
    none = [False] * 8
    assert active_units(averaged, 0.2, noise).tolist() == [[True, True] + [False] * 6, none]
    assert active_units(averaged, 0.01, noise).tolist() == [[True, True, True] + [False] * 5, none]
    assert active_units(averaged, 0.01)[1, 3:].all()  # without the correction: layer 2's noise counts
    assert torch.equal(noise[:, 0], torch.zeros(1000, 8))  # layer 1's means are exact on every path
    one_path = active_units(post.mean[0], 0.2)  # the old estimator: layer 2's path noise counts as active
    assert one_path[0].tolist() == [True, True] + [False] * 6 and one_path[1, 3:].all()


def test_estimators_refuse_splits_too_small_for_them():
    with pytest.raises(TooFewExamples, match="au needs at least 2 examples, got 1"):
        active_units(torch.zeros(1, 1, 4), 0.2)
    mu, logvar = torch.zeros(5, 2), torch.zeros(1, 2)
    with pytest.raises(TooFewExamples, match="mi needs at least 2 examples, got 1"):
        _mi(mu[:1], logvar)
    assert _mi(mu[:4], logvar, group_size=2).m == 2


def test_a_last_mi_block_of_one_example_joins_the_block_before_it():
    """Separated posteriors: each sentence's term is log of its block's size, so blocks of 2 and 3
    (not 2, 2 and 1, whose last q̂ would be the sentence's own posterior) give (2 log 2 + 3 log 3) / 5."""
    separated = torch.arange(5, dtype=torch.float)[:, None].repeat(1, 2) * 50.0
    mi = _mi(separated, torch.full((1, 2), math.log(0.01)), group_size=2)
    assert mi.paired.tolist() == pytest.approx([math.log(2)] * 2 + [math.log(3)] * 3, abs=1e-6)
    assert mi.value == pytest.approx((2 * math.log(2) + 3 * math.log(3)) / 5, abs=1e-6)
    assert mi.m == 3  # the largest block: log M bounds every term


class _GaussianEncoder:
    """A stand-in model: q(z|x_j) = N(mu_j, s^2 I) in D dims."""

    def __init__(self, mu, logvar):
        self.mu, self.logvar = mu, logvar

    def log_q_matrix(self, z, features):
        idx = features[:, 0, 0].long()
        return gaussian_log_density(z[:, None, 0], self.mu[idx][None], self.logvar[idx][None])


def _mi(mu, logvar, seed=0, group_size=None):
    n, d = mu.shape
    logvar = logvar.expand(n, d)
    torch.manual_seed(seed)
    z = (mu + torch.exp(0.5 * logvar) * torch.randn(n, d))[:, None]
    features = torch.arange(n, dtype=torch.float)[:, None, None]
    return mutual_information(_GaussianEncoder(mu, logvar), features, z, logvar[:, None], group_size)


def test_mi_is_log_n_for_separated_posteriors_and_exactly_zero_for_identical_ones():
    n, d = 3000, 2
    separated = _mi(torch.arange(n, dtype=torch.float)[:, None].repeat(1, d) * 50.0, torch.full((1, d), math.log(0.01)))
    assert abs(separated.value - math.log(n)) < 1e-3 and abs(separated.he2019.mean().item() - math.log(n)) < 0.1
    collapsed = _mi(torch.full((n, d), 0.7), torch.full((1, d), -0.5))  # q(z|x) the same for every x
    assert collapsed.paired.abs().max().item() < 1e-5
    assert abs(collapsed.he2019.mean().item()) < 0.1  # the same expectation, but only on average


def test_mi_matches_the_analytic_value_of_a_linear_gaussian_model_within_its_standard_error():
    """x ~ N(0, 1) (1-d), q(z|x) = N(a x, s^2): I(x; z) = 1/2 log(1 + a^2 / s^2)."""
    n, a, s2 = 4000, 2.0, 0.5
    x = torch.randn(n, 1, generator=torch.Generator().manual_seed(1))
    mi = _mi(a * x, torch.full((1, 1), math.log(s2)))
    truth = 0.5 * math.log(1 + a * a / s2)
    stderr = bootstrap_stderr(mi.paired)
    assert 0 < stderr < 0.05 and abs(mi.value - truth) < 4 * stderr
    assert abs(mi.he2019.mean().item() - truth) < 0.05


def test_della_mi_is_exactly_zero_when_the_posterior_ignores_x_though_it_depends_on_the_path():
    """The issue-10 case: a collapsed hierarchical posterior. The paired estimator gives 0 up to
    round-off; He et al.'s form gives 1/2 sum_d (eps_d^2 - 1) per sentence, a function of the sampling
    noise alone (sd ~ sqrt(D/2)/sqrt(N) over N sentences, and the same number on any test set of the
    same size under one seed: the -0.79 of issue 10)."""
    model = tiny_model("della", first_prior="learned", latent_size=16)
    with torch.no_grad():
        for g in range(model.n_groups):
            model.recog_x[g].weight.zero_()
            model.recog_h[g].weight.mul_(50.0)  # a strongly path-dependent posterior
    features = torch.randn(50, model.n_groups, model.backbone.n_embd, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    post = model.sample_posterior(features, k=1)
    mi = mutual_information(model, features, post.z[0], post.logvar[0])
    assert mi.paired.abs().max().item() < 1e-4
    eps = (post.z[0] - post.mean[0]) * torch.exp(-0.5 * post.logvar[0])  # the standardised noise
    assert torch.allclose(mi.he2019, 0.5 * (eps ** 2 - 1).sum((1, 2)), atol=1e-3)  # a function of the noise alone


def test_bootstrap_stderr_is_the_standard_error_of_the_mean_and_deterministic():
    terms = torch.randn(400, generator=torch.Generator().manual_seed(0)) * 3.0
    expected = terms.std().item() / math.sqrt(400)
    assert bootstrap_stderr(terms) == bootstrap_stderr(terms)
    assert abs(bootstrap_stderr(terms) - expected) < 0.1 * expected
    assert bootstrap_stderr(torch.full((50,), 2.5)) < 1e-12


@pytest.mark.parametrize("name", ["embed", "della"])
def test_the_iw_estimate_does_not_depend_on_how_many_sequences_a_decoder_pass_takes(name):
    model = tiny_model(name)
    ids, mask = random_batch()  # 4 sentences, K = 6: passes of 1, 2 and all 6 samples
    estimates = []
    for rows in (4, 8, 1000):
        torch.manual_seed(0)
        estimates.append(iw_batch(model, ids, mask, k=6, max_rows=rows).log_marginal)
    for other in estimates[1:]:
        assert torch.allclose(other, estimates[0], rtol=1e-6)


def test_iw_rows_auto_is_128_on_the_cpu_and_what_half_the_free_memory_holds_on_cuda(monkeypatch):
    row = iw_row_bytes(64, 50257, 768)
    assert row == 16 * 64 * 50257 + 64 * 64 * 768
    assert iw_rows("auto", torch.device("cpu"), 64, 50257, 768) == 128
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (2 * 10 * row + row, 2**40))
    assert iw_rows("auto", torch.device("cuda"), 64, 50257, 768) == 10
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (row, 2**40))
    assert iw_rows("auto", torch.device("cuda"), 64, 50257, 768) == 1  # never 0: one sequence a pass
    assert iw_rows(7, torch.device("cuda"), 64, 50257, 768) == 7


def test_iw_rows_takes_auto_or_a_positive_integer_and_names_the_key_otherwise():
    assert EvalConfig(iw_rows=64).iw_rows == 64
    for wrong in (0, True, "all", 2.5):
        with pytest.raises(ConfigError, match=f"evaluate.iw_rows = {wrong!r}"):
            EvalConfig(iw_rows=wrong)
