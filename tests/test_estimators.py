"""Each estimator on a case whose answer is known exactly (or in the limit, with a tolerance)."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from della.estimators import active_units, gaussian_neg_entropy, iw_batch, mutual_information
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
    hs = model._summaries(z)
    for g in range(model.n_groups):
        pm, pl = model._prior_params(g, hs[:, g])
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
        for param in model.parameters():
            if param.dim() == 2 and param.shape[0] == 2 * model.latent_size:
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


class _GaussianEncoder:
    """A stand-in model: q(z|x_j) = N(mu_j, s^2 I) in D dims."""

    def __init__(self, mu, logvar):
        self.mu, self.logvar = mu, logvar

    def log_q_matrix(self, z, features):
        idx = features[:, 0, 0].long()
        return gaussian_log_density(z[:, None, 0], self.mu[idx][None], self.logvar[idx][None])


def _mi(mu, logvar, seed=0):
    n, d = mu.shape
    logvar = logvar.expand(n, d)
    torch.manual_seed(seed)
    z = (mu + torch.exp(0.5 * logvar) * torch.randn(n, d))[:, None]
    features = torch.arange(n, dtype=torch.float)[:, None, None]
    return mutual_information(_GaussianEncoder(mu, logvar), features, z, logvar[:, None])


def test_mi_is_log_m_for_separated_posteriors_and_zero_for_identical_ones():
    n, d = 3000, 2
    separated = torch.arange(n, dtype=torch.float)[:, None].repeat(1, d) * 50.0
    small = torch.full((1, d), math.log(0.01))
    assert abs(_mi(separated, small) - math.log(n)) < 0.1
    assert abs(_mi(torch.zeros(n, d), torch.zeros(1, d))) < 0.1


def test_mi_matches_the_analytic_value_of_a_linear_gaussian_model():
    """x ~ N(0, 1) (1-d), q(z|x) = N(a x, s^2): I(x; z) = 1/2 log(1 + a^2 / s^2)."""
    n, a, s2 = 4000, 2.0, 0.5
    x = torch.randn(n, 1, generator=torch.Generator().manual_seed(1))
    estimate = _mi(a * x, torch.full((1, 1), math.log(s2)))
    assert abs(estimate - 0.5 * math.log(1 + a * a / s2)) < 0.05
