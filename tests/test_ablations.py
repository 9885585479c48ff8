"""The switches behind the paper's Table 4 (−LTP, −LW, Separate, KL on one layer) and Table 5 (BN-VAE,
β schedules): each keeps the estimator contracts and does what defines it, and the defaults stay the
paper's model."""

from __future__ import annotations


import pytest
import torch
from torch.distributions import Normal, kl_divergence

from della.config import TrainConfig
from della.models.backbone import Injection
from della.models.configs import KL_LAYER_CHOICES
from della.models.della import KL_LAYERS, AdditiveFusion, LowRankFusion
from della.train import BetaSchedule
from tests.conftest import TINY, random_batch, tiny_model

P = 8  # latent size of the tiny models here
VARIANTS = {
    "default": {},
    "add (-LTP)": {"fusion": "add"},
    "shared (-LW)": {"shared_latent": True},
    "separate": {"recurrence": False},
    "separate, learned prior": {"recurrence": False, "first_prior": "learned"},
    "kl first": {"kl_layers": "first"},
    "kl last": {"kl_layers": "last"},
    "bn": {"bn_gamma": 1.0},
}


def della(**args):
    return tiny_model("della", latent_size=P, **args)


def test_default_forward_is_the_papers_equations_recomputed_from_the_modules():
    """The default DELLA (learned first prior, so every summary is non-trivial): posterior path,
    decoder injection and loss recomputed here, step by step, from the model's own weights."""
    model = della(first_prior="learned")
    ids, mask = random_batch()
    x = model.encode(ids, mask)
    torch.manual_seed(5)
    post = model.sample_posterior(x, k=1)

    torch.manual_seed(5)
    h = z = torch.zeros(ids.shape[0], P)
    zs, noise = [], torch.randn(model.n_groups, ids.shape[0], P)  # every group's noise in one draw, as the model
    for g in range(model.n_groups):
        h = torch.tanh(model.cell_hh[g](h) + model.cell_ih[g](z))  # Eq. 7 (zeros in, for g = 0)
        mean, logvar = (model.recog_x[g](x[:, g]) + model.recog_h[g](h)).chunk(2, -1)
        z = mean + torch.exp(0.5 * logvar) * noise[g]
        zs.append(z)
    z = torch.stack(zs, 1)
    torch.testing.assert_close(post.z[0], z)  # the same maths; the cell runs as one map of [h; z]

    def eq_9(g):  # V' = (Σ_j T_j [V; 1]) ⊙ (Σ_j Z_j [z; 1]), with layer g's own factors
        fusion, ones = model.fusion, torch.ones(ids.shape[0], 1)
        factor = torch.cat([z[:, g], ones], -1) @ fusion.latent_weight[g].sum(0).T + fusion.latent_bias[g].sum(0)

        def qkv(h, c_attn):
            q, k, v = c_attn(h).split(TINY.n_embd, dim=2)
            text = torch.cat([v, ones[:, None].expand(*v.shape[:2], 1)], -1) @ fusion.text_weight[g].sum(0).T
            return q, k, (text + fusion.text_bias[g].sum(0)) * factor[:, None]
        return qkv

    hooks = {layer: eq_9(g) for g, layer in enumerate(model.layers)}
    hidden = model.backbone(ids, causal=True, inject=Injection(qkv=hooks)).hidden
    assert torch.allclose(model.decode(ids, z)[0], hidden @ model.backbone.wte.weight.T, atol=1e-5)

    torch.manual_seed(5)
    out = model.loss(ids, mask, beta=0.3)
    assert torch.allclose(out.loss, (model.token_nll(ids, mask, z) + 0.3 * post.kl[0].sum(-1)).mean())
    assert isinstance(model.fusion, LowRankFusion) and model.bn is None


@pytest.mark.parametrize("variant", VARIANTS, ids=list(VARIANTS))
def test_every_switch_keeps_the_shapes_and_the_estimator_contracts(variant):
    model = della(**VARIANTS[variant])
    groups = 1 if model.config.shared_latent else TINY.n_layer
    ids, mask = random_batch()
    x = model.encode(ids, mask)
    assert x.shape == (ids.shape[0], groups, TINY.n_embd)
    post = model.sample_posterior(x, k=2)
    assert post.z.shape == (2, ids.shape[0], groups, P) and post.kl.shape == (2, ids.shape[0], groups)
    assert model.sample_prior(3).shape == (3, groups, P)
    assert model.decode(ids, post.z[0])[0].shape == (*ids.shape, 50)
    # log q(z_i | x_j) on the diagonal is the sampler's density
    matrix = model.log_q_matrix(post.z[0], x)
    assert torch.allclose(torch.diagonal(matrix), post.log_q[0].sum(-1), atol=1e-4)
    # the KL is the closed form between the posterior and the prior on the sampled path
    z = post.z.flatten(0, 1)
    prior_mean, prior_logvar = model.prior_along(z)
    for g in range(groups):
        pm, pl = prior_mean[:, g], prior_logvar[:, g]
        q = Normal(post.mean.flatten(0, 1)[:, g], torch.exp(0.5 * post.logvar.flatten(0, 1)[:, g]))
        p = Normal(pm, torch.exp(0.5 * pl))
        assert torch.allclose(post.kl.flatten(0, 1)[:, g], kl_divergence(q, p).sum(-1), atol=1e-4)
        assert torch.allclose(post.log_p.flatten(0, 1)[:, g], p.log_prob(z[:, g]).sum(-1), atol=1e-4)


def test_additive_fusion_adds_the_projected_latent_to_the_values_only():
    """−LTP: V' = V + W z. A zero latent adds nothing, so the decoder is then the plain GPT-2."""
    model = della(fusion="add")
    assert isinstance(model.fusion, AdditiveFusion)
    ids, _ = random_batch()
    plain = model.backbone(ids, causal=True).hidden @ model.backbone.wte.weight.T
    zero = torch.zeros(ids.shape[0], model.n_groups, P)
    assert torch.allclose(model.decode(ids, zero)[0], plain, atol=1e-6)
    assert not torch.allclose(model.decode(ids, torch.randn_like(zero))[0], plain, atol=1e-3)
    h, attn, z = torch.randn(2, 5, TINY.n_embd), model.backbone.gpt2.h[1].attn, torch.randn(2, model.n_groups, P)
    factors, _ = model.layer_factors(z)
    q, k, v = model.fusion.project(1, h, attn.c_attn, factors[1])
    q0, k0, v0 = attn.c_attn(h).split(TINY.n_embd, dim=2)
    assert torch.equal(q, q0) and torch.equal(k, k0)
    assert torch.allclose(v, v0 + (z[:, 1] @ model.fusion.latent[1].weight.T)[:, None])


def test_shared_latent_is_one_z_from_the_top_layer_fused_into_every_layer():
    model = della(shared_latent=True)
    assert model.n_groups == 1 and model.layers == list(range(TINY.n_layer)) and len(model.fusion.text_weight) == TINY.n_layer
    ids, mask = random_batch()
    top = model.backbone(ids, mask, causal=False, return_layers=True, final_norm=False).layers[-1][:, 0]
    assert torch.equal(model.encode(ids, mask)[:, 0], top)
    z = torch.randn(ids.shape[0], 1, P)
    hooks = model.injection(z).qkv
    assert sorted(hooks) == model.layers
    ones = torch.ones(ids.shape[0], 1)
    for i, layer in enumerate(model.layers):  # every layer's own fusion, all of the same z
        w, b = model.fusion.latent_weight[i].sum(0), model.fusion.latent_bias[i].sum(0)
        torch.testing.assert_close(hooks[layer].keywords["factor"], torch.cat([z[:, 0], ones], -1) @ w.T + b)


@pytest.mark.parametrize("first_prior", ["standard", "learned"])
def test_without_recurrence_a_layers_posterior_and_prior_ignore_the_latents_below(first_prior):
    """Separate: q(z_2 | x) sees only x^(2); two draws of z_1 leave it unchanged (with the
    recurrence they move it), and every prior is the first layer's."""
    ids, mask = random_batch()
    for recurrence in (True, False):
        model = della(recurrence=recurrence, first_prior=first_prior)
        x = model.encode(ids, mask)
        post = model.sample_posterior(x, k=2)
        assert not torch.equal(post.z[0, :, 0], post.z[1, :, 0])
        same = torch.equal(post.mean[0, :, 1], post.mean[1, :, 1])
        assert same == (not recurrence)
        chain = model._chain(None)
        expected = model.recog_x[1](x[:, 1]) + model.recog_h[1](model._summary(0, torch.zeros(4, P), torch.zeros(4, P), chain))
        assert torch.allclose(post.mean[0, :, 1], expected.chunk(2, -1)[0]) == (not recurrence)
    prior_mean, _ = model.prior_along(torch.randn(1, model.n_groups, P))
    for g in range(1, model.n_groups):
        if first_prior == "standard":
            assert torch.equal(prior_mean[:, g], torch.zeros(1, P))
        else:  # the same rule as the first layer's (its own weights): zeros in
            summary = torch.tanh(model.cell_hh[g].bias + model.cell_ih[g].bias)[None]
            assert torch.equal(prior_mean[:, g], model.prior[g](summary).chunk(2, -1)[0])


def test_the_config_accepts_exactly_the_kl_layers_the_model_maps():
    assert tuple(KL_LAYERS) == KL_LAYER_CHOICES


@pytest.mark.parametrize("kl_layers, inferred", [("all", [0, 1, 2]), ("first", [0]), ("last", [2])])
def test_kl_layers_infers_only_those_layers_and_draws_the_others_from_their_prior(kl_layers, inferred):
    """KL only at l = 1 (or L): the other layers' q is their conditional prior given the sampled
    z_<l, so their KL is 0 and the loss optimises that one KL term."""
    model = della(kl_layers=kl_layers, first_prior="learned")
    with torch.no_grad():  # posterior means far from the priors', so an inferred layer's KL is large
        for head in model.recog_x:
            head.weight[:P].mul_(1e4)
    ids, mask = random_batch()
    torch.manual_seed(0)
    out = model.loss(ids, mask, beta=1.0)
    assert torch.allclose(out.loss, (out.ce + out.kl.sum(-1)).mean())
    for g in range(TINY.n_layer):
        assert (out.kl[:, g] > 1).all() if g in inferred else torch.allclose(out.kl[:, g], torch.zeros(4), atol=1e-5)
    post = model.sample_posterior(model.encode(ids, mask), k=1)
    prior_mean, prior_logvar = model.prior_along(post.z[0])
    for g in set(range(TINY.n_layer)) - set(inferred):
        assert torch.equal(post.mean[0, :, g], prior_mean[:, g]) and torch.equal(post.logvar[0, :, g], prior_logvar[:, g])
    matrix = model.log_q_matrix(post.z[0], model.encode(ids, mask))
    assert torch.allclose(torch.diagonal(matrix), post.log_q[0].sum(-1), atol=1e-4)


@pytest.mark.parametrize("name", ["della", "embed", "memory", "softmax"])
def test_bn_vae_normalises_the_batchs_posterior_means_to_scale_gamma(name):
    model = tiny_model(name, latent_size=P, bn_gamma=0.5).train()
    with torch.no_grad():  # means that vary well above BN's eps = 1e-5, so the batch variance is γ²
        for head in (model.recog_x if name == "della" else [model.to_posterior]):
            head.weight[:P].mul_(1e4)  # the mean's rows of [mu; log s2]
    ids, mask = random_batch(b=16, pad_last=0)
    mean = model.sample_posterior(model.encode(ids, mask), k=1).mean[0]  # (B, G, p)
    assert torch.allclose(mean.mean(0), torch.zeros_like(mean[0]), atol=1e-5)
    assert torch.allclose(mean.var(0, unbiased=False), torch.full_like(mean[0], 0.25), atol=1e-3)
    model.eval()  # running statistics: the contract log q(z_i | x_i) still holds
    x = model.encode(ids, mask)
    post = model.sample_posterior(x, k=1)
    assert torch.allclose(torch.diagonal(model.log_q_matrix(post.z[0], x)), post.log_q[0].sum(-1), atol=1e-4)


@pytest.mark.parametrize("args, key", [({"fusion": "sum"}, "fusion"), ({"kl_layers": "middle"}, "kl_layers"),
                                       ({"bn_gamma": 0.0}, "bn_gamma")])
def test_bad_switch_values_name_their_key(args, key):
    with pytest.raises(ValueError, match=f"model_args.{key}"):
        della(**args)


def test_monotonic_beta_ramps_once_over_the_warmup_then_holds():
    cfg = TrainConfig(beta_schedule="monotonic", beta_0=0.0, beta=1.0, warmup_epochs=2)
    schedule, steps = BetaSchedule(cfg, 4), 4
    beta, seen = schedule.initial(), []
    for epoch in range(4):
        for _ in range(steps):
            seen.append(beta)
            beta = schedule.after_step(beta, epoch)
    assert seen[:9] == pytest.approx([i / 8 for i in range(9)])  # β updates after each of W * S = 8 steps
    assert seen[9:] == [1.0] * 7
    with pytest.raises(ValueError, match="warmup_epochs"):
        BetaSchedule(TrainConfig(beta_schedule="monotonic", warmup_epochs=0), 4)


@pytest.mark.parametrize("name", ["embed", "memory", "softmax", "della"])
def test_bow_loss_is_the_bag_of_words_likelihood_of_the_predicted_tokens_under_the_top_latent(name):
    """Table 5's +BOW: -sum_t log softmax(E W z)[x_t] over the predicted tokens, added with weight
    bow_weight; the head is the plain tied one (the Softmax paradigm's own W_s z is not added)."""
    model = tiny_model(name, use_bow=True, bow_weight=0.3)
    ids, mask = random_batch()
    torch.manual_seed(0)
    out = model.loss(ids, mask, beta=0.5)
    torch.manual_seed(0)
    post = model.sample_posterior(model.encode(ids, mask), k=1)
    z = post.z[0]
    logits = model.bow(z[:, -1]) @ model.backbone.wte.weight.T
    expected = -(logits.log_softmax(-1).gather(1, ids[:, 1:]) * mask[:, 1:]).sum(1)
    torch.testing.assert_close(out.bow, expected)
    ce = model.token_nll(ids, mask, z)
    torch.testing.assert_close(out.loss, (ce + 0.5 * post.kl[0].sum(-1) + 0.3 * expected).mean())
    assert tiny_model(name).loss(ids, mask, beta=0.5).bow is None  # off by default
