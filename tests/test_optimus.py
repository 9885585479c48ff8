"""The Optimus model: the shared interface contract, its objective, and how z reaches the decoder."""

from __future__ import annotations

import pytest
import torch
from torch.distributions import Normal, kl_divergence
from transformers import BertConfig, BertModel, DynamicCache, GPT2Config, GPT2Model

from della.batches import EncodedSplit
from della.evaluate import collect
from tests import test_estimators as estimator_checks
from tests import test_generate as generate_checks
from tests import test_models as model_checks
from tests.conftest import VOCAB, hf_gpt2, random_batch, tiny_model

# --- the contract every model of the project meets, run on `optimus` ------------------------------

CONTRACT = [
    model_checks.test_decoder_is_causal,
    model_checks.test_every_latent_model_uses_z,
    model_checks.test_cached_decoding_equals_full_recomputation,
    estimator_checks.test_pairwise_log_q_matches_the_sampled_posterior_on_the_diagonal,
    estimator_checks.test_iw_nll_converges_to_the_lm_nll_when_the_decoder_ignores_z,
    generate_checks.test_cached_greedy_generation_equals_recomputing_the_prefix,
]


@pytest.mark.parametrize("check", CONTRACT, ids=lambda f: f.__name__)
def test_interface_contract(check):
    check("optimus")


def test_save_and_load_round_trip(tmp_path):
    model = tiny_model("optimus", latent_size=8, tie_lm_head=False)
    model.save_pretrained(tmp_path / "m")
    loaded = type(model).from_pretrained(tmp_path / "m").eval()
    ids, mask = random_batch()
    z = model.sample_prior(4)
    assert loaded.config == model.config
    assert torch.equal(model.encode(ids, mask), loaded.encode(ids, mask))
    assert torch.equal(model.decode(ids, z)[0], loaded.decode(ids, z)[0])


# --- the objective ---------------------------------------------------------------------------------

@pytest.mark.parametrize("beta", [0.0, 0.3, 1.0])
def test_loss_is_ce_plus_beta_kl_against_the_standard_normal_prior(beta):
    model = tiny_model("optimus")
    ids, mask = random_batch()
    torch.manual_seed(5)
    out = model.loss(ids, mask, beta)
    torch.manual_seed(5)  # the same posterior sample
    post = model.sample_posterior(model.encode(ids, mask), k=1)
    q = Normal(post.mean[0, :, 0], torch.exp(0.5 * post.logvar[0, :, 0]))
    kl = kl_divergence(q, Normal(0.0, 1.0)).sum(-1)
    assert torch.allclose(out.kl[:, 0], kl, atol=1e-5)
    assert torch.allclose(out.ce, model.token_nll(ids, mask, post.z[0]), atol=1e-5)
    assert torch.allclose(out.loss, (out.ce + beta * kl).mean(), atol=1e-5)
    assert torch.equal(out.n_tokens, mask[:, 1:].sum(1))


def test_optimus_is_registered_under_its_paper_name():
    from della.models import MODELS, default_label

    assert "optimus" in MODELS.names() and default_label("optimus") == "Optimus"


def test_posterior_head_has_no_bias_as_in_optimus():
    model = tiny_model("optimus")
    assert model.to_posterior.bias is None
    assert model.to_posterior.weight.shape == (2 * model.latent_size, model.encoder.config.hidden_size)


# --- the encoder -----------------------------------------------------------------------------------

def test_encoder_is_bidirectional_and_ignores_padding():
    model = tiny_model("optimus")
    ids, mask = random_batch(pad_last=3)
    late = ids.clone()
    late[:3, -2] = (late[:3, -2] + 1 - 3) % 47 + 3  # a late token of the unpadded rows
    pooled, pooled_late = model.encode(ids, mask), model.encode(late, mask)
    assert not torch.allclose(pooled[:3], pooled_late[:3])  # the first token ([CLS]) sees it
    other_pad = ids.clone()
    other_pad[-1, -3:] = 7  # other tokens under the padding
    assert torch.allclose(pooled, model.encode(other_pad, mask), atol=1e-6)


def test_scratch_encoder_is_a_bert_sized_like_the_backbone_over_the_project_vocab():
    model = tiny_model("optimus")
    cfg, gpt2 = model.encoder.config, model.backbone.gpt2.config
    assert isinstance(model.encoder, BertModel)
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads) == (gpt2.n_layer, gpt2.n_embd, gpt2.n_head)
    assert model.encoder.get_input_embeddings().num_embeddings == VOCAB.size


def _tiny_bert(directory, hidden=32):
    torch.manual_seed(1)
    bert = BertModel(BertConfig(vocab_size=99, hidden_size=hidden, num_hidden_layers=2, num_attention_heads=2,
                                intermediate_size=4 * hidden, max_position_embeddings=16))
    bert.save_pretrained(directory)
    return bert


def test_pretrained_encoder_keeps_bert_layers_and_gets_new_word_embeddings(tmp_path):
    bert = _tiny_bert(tmp_path / "bert")
    model = tiny_model("optimus", encoder_pretrained=str(tmp_path / "bert"))
    layer = "encoder.layer.1.attention.self.query.weight"
    assert torch.equal(model.encoder.state_dict()[layer], bert.state_dict()[layer])
    assert torch.equal(model.encoder.pooler.dense.weight, bert.pooler.dense.weight)
    assert model.encoder.get_input_embeddings().weight.shape == (VOCAB.size, 32)
    ids, mask = random_batch()
    assert model.encode(ids, mask).shape == (4, 1, 32)
    model.save_pretrained(tmp_path / "m")
    loaded = type(model).from_pretrained(tmp_path / "m").eval()
    assert torch.equal(model.encode(ids, mask), loaded.encode(ids, mask))
    split = EncodedSplit(path="tiny", sequences=[row[row != VOCAB.pad_id].tolist() for row in ids])
    assert collect(loaded, split, k=2, batch_size=2, device="cpu")["features"].shape == (4, 1, 32)  # evaluates


def test_pretrained_encoder_must_be_a_loadable_bert(tmp_path):
    GPT2Model(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=20)).save_pretrained(tmp_path / "gpt2")
    with pytest.raises(ValueError, match="encoder_pretrained.*'gpt2' checkpoint.*needs a BERT"):
        tiny_model("optimus", encoder_pretrained=str(tmp_path / "gpt2"))
    with pytest.raises(ValueError, match="encoder_pretrained.*cannot load"):
        tiny_model("optimus", encoder_pretrained=str(tmp_path / "absent"))
    _tiny_bert(tmp_path / "wide", hidden=48)
    with pytest.raises(ValueError, match="hidden size 48 differs from the GPT-2 backbone's n_embd = 32"):
        tiny_model("optimus", encoder_pretrained=str(tmp_path / "wide"))


def test_sentence_longer_than_the_encoder_positions_is_a_clear_error(tmp_path):
    _tiny_bert(tmp_path / "bert")  # 16 positions
    model = tiny_model("optimus", encoder_pretrained=str(tmp_path / "bert"))
    ids, mask = random_batch(t=20)
    with pytest.raises(ValueError, match="20 tokens exceeds the BERT encoder's 16 positions"):
        model.encode(ids, mask)


def test_memory_slot_needs_one_position_more_than_the_sentence():
    model = tiny_model("optimus")  # 32 positions: 31 tokens and the memory slot
    model.decode(torch.full((1, 31), 5), model.sample_prior(1))
    with pytest.raises(ValueError, match="32 tokens plus Optimus's memory slot exceeds backbone.n_positions = 32"):
        model.decode(torch.full((1, 32), 5), model.sample_prior(1))


# --- the decoder: embedding + memory, as Optimus ----------------------------------------------------

def test_decoder_equals_hugging_face_gpt2_with_the_memory_as_past_and_the_embedding_added():
    """Reference: HF's own GPT-2 pass, given (m_l, m_l) as a one-step past_key_values (so
    positions are 1..T, as in Optimus) and W_e z added to the token embeddings."""
    model = tiny_model("optimus")
    ids, _ = random_batch(pad_last=0)
    z = model.sample_prior(ids.shape[0])
    N, L, H = ids.shape[0], model.backbone.n_layer, model.backbone.n_head
    m = model.latent_to_memory(z[:, 0]).view(N, L, H, 1, -1)
    past = DynamicCache(ddp_cache_data=[(m[:, layer], m[:, layer]) for layer in range(L)])
    gpt2 = hf_gpt2(model.backbone)
    embeds = gpt2.wte(ids) + model.latent_to_embedding(z[:, 0])[:, None]
    hidden = gpt2(inputs_embeds=embeds, cache=past, attention_mask=torch.ones(N, ids.shape[1] + 1),
                  use_cache=True).last_hidden_state
    expected = hidden @ gpt2.wte.weight.T
    assert torch.allclose(model.decode(ids, z)[0], expected, atol=1e-5)


@pytest.mark.parametrize("cut", ["latent_to_memory", "latent_to_embedding"])
def test_z_reaches_the_decoder_through_both_the_memory_and_the_embedding(cut):
    """With either path zeroed, z still changes the logits through the other one."""
    model = tiny_model("optimus")
    with torch.no_grad():
        getattr(model, cut).weight.zero_()
    ids, _ = random_batch(pad_last=0)
    z1, z2 = model.sample_prior(4), model.sample_prior(4)
    assert not torch.allclose(model.decode(ids, z1)[0], model.decode(ids, z2)[0])


def test_z_does_not_reach_the_decoder_when_both_paths_are_cut():
    model = tiny_model("optimus")
    with torch.no_grad():
        model.latent_to_memory.weight.zero_(), model.latent_to_embedding.weight.zero_()
    ids, _ = random_batch(pad_last=0)
    assert torch.equal(model.decode(ids, model.sample_prior(4))[0], model.decode(ids, model.sample_prior(4))[0])
