"""Architecture facts that the paper and the reference state, each checked on a tiny model."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from della.models import MODELS, runs_on
from della.models.della import LowRankFusion, once
from tests.conftest import random_batch, tiny_model

# Every registered model is tested: a newly registered model is picked up by these tests without an edit.
GPT2_MODELS = [name for name in MODELS.names() if runs_on(name, "gpt2")]  # `bart` has tests/test_bart_cvae.py
LATENT_MODELS = [name for name in GPT2_MODELS if MODELS.get(name).has_latent]
POOLING_MODELS = [name for name in LATENT_MODELS  # those that pool the shared backbone's states
                  if "pool" in {f.name for f in dataclasses.fields(MODELS.get(name).config_class)}]


def test_registry_holds_every_model_of_the_shipped_configs_and_suggests_close_names():
    import yaml

    from tests.conftest import REPO

    for path in sorted((REPO / "config").glob("*.yaml")):
        models = yaml.safe_load(path.read_text())["models"]
        assert {m["model"] for m in models.values()} <= set(MODELS.names()), path
    with pytest.raises(KeyError, match="Did you mean 'della'"):
        MODELS.get("dela")


def test_unknown_model_arg_is_rejected_with_the_valid_keys():
    with pytest.raises(ValueError, match="unknown key.*latent_dim.*valid keys"):
        tiny_model("della", latent_dim=8)


def test_encoder_is_bidirectional_a_late_token_changes_the_first_pooled_layer():
    model = tiny_model("della")
    ids, mask = random_batch(pad_last=0)
    changed = ids.clone()
    changed[:, -2] = (changed[:, -2] + 1 - 3) % 47 + 3  # another ordinary token
    first = model.encode(ids, mask)[:, 0]
    assert not torch.allclose(first, model.encode(changed, mask)[:, 0])


def test_encoder_ignores_padding_when_pool_mask_is_on_and_not_in_official_mode():
    ids, mask = random_batch(pad_last=3)
    other_pad = ids.clone()
    other_pad[-1, -3:] = 7  # different tokens in padded positions
    masked = tiny_model("della")
    assert torch.allclose(masked.encode(ids, mask), masked.encode(other_pad, mask), atol=1e-6)
    official = tiny_model("della", pool="attention", pool_mask=False)
    assert not torch.allclose(official.encode(ids, mask)[-1], official.encode(other_pad, mask)[-1])


@pytest.mark.parametrize("name", POOLING_MODELS)
def test_first_token_pooling_takes_the_encoder_state_of_s_and_has_no_weights(name):
    """The paper's x^(l) (§4, App. A.1): DELLA reads block l's output, the baselines the final state."""
    model = tiny_model(name, pool="first_token")
    ids, mask = random_batch()
    out = model.backbone(ids, mask, causal=False, return_layers=True)
    expected = (torch.stack([out.layers[l][:, 0] for l in model.layers], 1) if name == "della"
                else out.hidden[:, :1])
    assert torch.allclose(model.encode(ids, mask), expected, atol=1e-6)
    assert not [n for n, _ in model.named_parameters() if n.startswith("pool")]


def test_pool_defaults_paper_for_della_official_code_in_its_preset_and_attention_for_the_baselines():
    import yaml

    from tests.conftest import REPO

    assert tiny_model("della").config.pool == "first_token" and tiny_model("embed").config.pool == "attention"
    preset = yaml.safe_load((REPO / "config" / "config.yaml").read_text())["models"]["della-official"]["args"]
    assert preset["pool"] == "attention"
    with pytest.raises(ValueError, match="model_args.pool = 'cls'; expected one of"):
        tiny_model("embed", pool="cls")


@pytest.mark.parametrize("name", GPT2_MODELS)
def test_decoder_is_causal(name):
    model = tiny_model(name)
    ids, _ = random_batch(pad_last=0)
    z = model.sample_prior(ids.shape[0])
    changed = ids.clone()
    changed[:, 6] = (changed[:, 6] + 1 - 3) % 47 + 3
    logits, _ = model.decode(ids, z)
    logits2, _ = model.decode(changed, z)
    assert torch.allclose(logits[:, :6], logits2[:, :6], atol=1e-6)
    assert not torch.allclose(logits[:, 6:], logits2[:, 6:])


@pytest.mark.parametrize("name", GPT2_MODELS)
@torch.no_grad()
def test_token_nll_scores_every_next_token_of_the_full_sequence_decode(name):
    """token_nll decodes all but the last token (which predicts nothing): the same log-probabilities
    as the whole sequence's decode, summed over the real tokens after <s>."""
    model = tiny_model(name)
    ids, mask = random_batch()
    z = model.sample_prior(4, torch.Generator().manual_seed(1))
    logp = model.decode(ids, z)[0].log_softmax(-1)
    by_hand = torch.stack([-sum(logp[b, t - 1, ids[b, t]] for t in range(1, int(mask[b].sum())))
                           for b in range(ids.shape[0])])
    torch.testing.assert_close(model.token_nll(ids, mask, z), by_hand, atol=1e-5, rtol=1e-5)


def test_della_latent_changes_every_injected_layer_and_no_layer_below():
    model = tiny_model("della", begin_layer=1, end_layer=2)
    ids, _ = random_batch(pad_last=0)
    z1, z2 = model.sample_prior(4), model.sample_prior(4)
    outs = [model.backbone(ids, causal=True, inject=model.injection(z), return_layers=True).layers for z in (z1, z2)]
    assert torch.equal(outs[0][0], outs[1][0])  # layer 0 has no latent
    for layer in (1, 2):
        assert not torch.allclose(outs[0][layer], outs[1][layer])
    # each latent group reaches its own layer: changing only z_2 leaves layer 1 untouched
    z3 = z1.clone()
    z3[:, 1] += 1.0
    out3 = model.backbone(ids, causal=True, inject=model.injection(z3), return_layers=True).layers
    assert torch.equal(out3[1], outs[0][1]) and not torch.allclose(out3[2], outs[0][2])


@pytest.mark.parametrize("name", LATENT_MODELS)
def test_every_latent_model_uses_z(name):
    model = tiny_model(name)
    ids, _ = random_batch(pad_last=0)
    a, _ = model.decode(ids, model.sample_prior(4))
    b, _ = model.decode(ids, model.sample_prior(4))
    assert not torch.allclose(a, b)


def test_lowrank_fusion_matches_the_formula_of_eq_9_at_every_layer():
    torch.manual_seed(0)
    n, d, p, r = 2, 6, 3, 4
    v, z = torch.randn(2, 5, d), torch.randn(2, n, p)
    one_v, one_z = torch.ones(2, 5, 1), torch.ones(2, 1)
    for mode in ("paper", "lowrank"):
        f = LowRankFusion(n, d, p, r, mode)
        with torch.no_grad():
            f.text_bias.normal_()
            f.latent_bias.normal_()
        factors, maps = f.latent_factors(z), once(f.text_maps)
        for i in range(n):
            text = [torch.cat([v, one_v], -1) @ f.text_weight[i, j].T + f.text_bias[i, j] for j in range(r)]
            lat = [torch.cat([z[:, i], one_z], -1) @ f.latent_weight[i, j].T + f.latent_bias[i, j] for j in range(r)]
            if mode == "paper":  # (Σ_j T_j[v;1]) ⊙ (Σ_j Z_j[z;1])
                expected = sum(text) * sum(lat)[:, None]
            else:  # Σ_j (T_j[v;1]) ⊙ (Z_j[z;1])
                expected = sum(t * zz[:, None] for t, zz in zip(text, lat))
            got = f.values(i, v, factors[i], maps)
            assert torch.allclose(got, expected, atol=1e-5), (mode, i)


@pytest.mark.parametrize("name", GPT2_MODELS)
def test_cached_decoding_equals_full_recomputation(name):
    model = tiny_model(name)
    ids, _ = random_batch(pad_last=0)
    z = model.sample_prior(ids.shape[0])
    full, _ = model.decode(ids, z)
    logits, cache = model.decode(ids[:, :3], z, use_cache=True)
    steps = [logits]
    for t in range(3, ids.shape[1]):
        logits, cache = model.decode(ids[:, t:t + 1], z, cache=cache, use_cache=True)
        steps.append(logits)
    assert torch.allclose(torch.cat(steps, 1), full, atol=1e-5)


def test_della_first_prior_is_standard_normal_by_default_and_learned_in_official_mode():
    model = tiny_model("della")
    post = model.sample_posterior(model.encode(*random_batch()), k=2)
    z0 = post.z[..., 0, :]
    expected = -0.5 * (torch.log(torch.tensor(2 * torch.pi)) + z0 ** 2).sum(-1)
    assert torch.allclose(post.log_p[..., 0], expected, atol=1e-5)
    learned = tiny_model("della", first_prior="learned")
    with torch.no_grad():
        learned.cell_ih[0].bias.fill_(0.5)
        learned.prior[0].weight.fill_(0.3)
    post = learned.sample_posterior(learned.encode(*random_batch()), k=2)
    z0 = post.z[..., 0, :]
    std_normal = -0.5 * (torch.log(torch.tensor(2 * torch.pi)) + z0 ** 2).sum(-1)
    assert not torch.allclose(post.log_p[..., 0], std_normal, atol=1e-3)


def test_official_switches_change_the_training_objective():
    ids, mask = random_batch()
    torch.manual_seed(1)
    paper = tiny_model("della").loss(ids, mask, beta=1.0)
    torch.manual_seed(1)
    official = tiny_model("della", kl_aggregate="mean").loss(ids, mask, beta=1.0)
    # same sample (same seed), KL summed over the 3 layers vs averaged
    assert torch.allclose(paper.kl, official.kl)
    assert torch.allclose(paper.loss - paper.ce.mean(), 3 * (official.loss - official.ce.mean()), atol=1e-5)


def test_kl_threshold_applies_per_example_and_group():
    model = tiny_model("della", kl_threshold=5.0)
    kl = torch.tensor([[1.0, 7.0, 0.0], [6.0, 6.0, 6.0]])
    assert torch.allclose(model.aggregate_kl(kl), torch.tensor([5 + 7 + 5.0, 18.0]))


def test_save_and_load_round_trip(tmp_path):
    model = tiny_model("della", lmf_mode="lowrank", tie_lm_head=False)
    model.save_pretrained(tmp_path / "m")
    loaded = type(model).from_pretrained(tmp_path / "m").eval()
    ids, _ = random_batch()
    z = model.sample_prior(4)
    assert loaded.config == model.config
    assert torch.equal(model.decode(ids, z)[0], loaded.decode(ids, z)[0])


@pytest.mark.parametrize("fusion", ["lmf", "add"])
def test_a_checkpoint_of_the_per_group_layout_still_loads(tmp_path, fusion):
    """Saved before DELLA's per-layer weights were stacked: `recog_x.0.weight`, `fusion.1.text_weight`."""
    model = tiny_model("della", fusion=fusion)
    model.save_pretrained(tmp_path / "m")
    per_group = {}
    for key, value in torch.load(tmp_path / "m" / "model.pt").items():
        name, _, param = key.partition(".")
        if name in ("recog_x", "recog_h", "prior", "cell_ih", "cell_hh", "fusion"):
            per_group.update({f"{name}.{g}.{param}": tensor.clone() for g, tensor in enumerate(value)})
        else:
            per_group[key] = value
    assert "fusion.2.latent.weight" in per_group or "fusion.2.text_weight" in per_group
    torch.save(per_group, tmp_path / "m" / "model.pt")
    loaded = type(model).from_pretrained(tmp_path / "m").eval()
    ids, _ = random_batch()
    z = model.sample_prior(4)
    assert torch.equal(model.decode(ids, z)[0], loaded.decode(ids, z)[0])


def test_folded_value_projection_equals_the_fusion_applied_after_it():
    model = tiny_model("della")
    fusion = model.fusion
    projections = [model.backbone.gpt2.h[layer].attn.c_attn for layer in model.layers]
    with torch.no_grad():
        fusion.text_bias.normal_()
        for c_attn in projections:
            c_attn.bias.normal_()
    h, z = torch.randn(3, 20, 32), torch.randn(3, model.n_groups, model.latent_size)
    factors, maps = model.layer_factors(z)
    folded = once(lambda: fusion.folded(projections, maps))
    for i, c_attn in enumerate(projections):  # 3 x 20 tokens > d = 32: the folded projection
        q, k, v = c_attn(h).split(32, dim=2)
        plain = (q, k, fusion.values(i, v, factors[i], maps))
        for a, b in zip(fusion.project(i, h, c_attn, factors[i], maps, folded), plain):
            assert torch.allclose(a, b, atol=1e-5)
