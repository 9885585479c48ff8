"""The BART backbone: our forward over HF weights equals HF's own, and its hooks do what they say."""

from __future__ import annotations

import pickle

import pytest
import torch
from transformers import BartConfig, BartForConditionalGeneration
from transformers import BartModel as HFBartModel

from della.config import BackboneConfig
from della.models.bart_backbone import BartBackbone, BartModel, DecoderInjection
from della.models.bart_backbone import BartConfig as OurConfig
from tests.conftest import hf_bart

V, D, LAYERS = 50, 32, 3


def tiny_bart(seed: int = 0, scale_embedding: bool = False) -> BartForConditionalGeneration:
    torch.manual_seed(seed)
    config = BartConfig(vocab_size=V, d_model=D, encoder_layers=LAYERS, decoder_layers=LAYERS,
                        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64,
                        decoder_ffn_dim=64, max_position_embeddings=24, dropout=0.0, attention_dropout=0.0,
                        activation_dropout=0.0, pad_token_id=1, bos_token_id=0, eos_token_id=2,
                        decoder_start_token_id=2, scale_embedding=scale_embedding)
    model = BartForConditionalGeneration(config).eval()
    model.final_logits_bias.normal_()  # zeros in the checkpoints; random here so the test sees it
    return model


def batch(n: int, t: int, seed: int, pad_last: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, V, (n, t), generator=g)
    mask = torch.ones(n, t, dtype=torch.long)
    if pad_last:
        ids[-1, t - pad_last:] = 1
        mask[-1, t - pad_last:] = 0
    return ids, mask


@pytest.mark.parametrize("scale_embedding", [False, True])  # bart-base: False
@torch.no_grad()
def test_logits_without_latent_equal_hf_bart_for_conditional_generation(scale_embedding):
    hf = tiny_bart(scale_embedding=scale_embedding)
    ours = BartBackbone.from_hf(hf).eval()
    src, src_mask = batch(3, 11, seed=1, pad_last=4)
    tgt, tgt_mask = batch(3, 7, seed=2, pad_last=3)
    expected = hf(input_ids=src, attention_mask=src_mask, decoder_input_ids=tgt,
                  decoder_attention_mask=tgt_mask).logits
    enc = ours.encode(src, src_mask)
    logits = ours.lm_logits(ours.decode(tgt, enc.hidden, src_mask).hidden)
    real = tgt_mask.bool()  # right padding: pad positions are never predicted from
    torch.testing.assert_close(logits[real], expected[real], atol=1e-5, rtol=0)
    hf_encoder = hf.model.encoder(input_ids=src, attention_mask=src_mask).last_hidden_state
    torch.testing.assert_close(enc.hidden, hf_encoder, atol=1e-5, rtol=0)


def _hooks(ours: BartBackbone, n: int, seed: int = 3) -> DecoderInjection:
    g = torch.Generator().manual_seed(seed)
    scale = torch.randn(D, generator=g)
    return DecoderInjection(embed=torch.randn(n, D, generator=g),
                            memory=[torch.randn(n, D, generator=g) for _ in range(LAYERS)],
                            values={1: lambda v: v * scale}, softmax=torch.randn(n, D, generator=g))


@pytest.mark.parametrize("hooked", [True, False])
@torch.no_grad()
def test_cached_decoding_equals_full_recomputation(hooked):
    ours = BartBackbone.from_hf(tiny_bart()).eval()
    src, src_mask = batch(2, 9, seed=4, pad_last=3)
    tgt, _ = batch(2, 8, seed=5)
    inject = _hooks(ours, 2) if hooked else None
    enc = ours.encode(src, src_mask).hidden
    full = ours.lm_logits(ours.decode(tgt, enc, src_mask, inject=inject).hidden, inject)
    cache, steps = None, []
    for t in range(tgt.shape[1]):
        out = ours.decode(tgt[:, t:t + 1], enc, src_mask, cache=cache, inject=inject, use_cache=True)
        cache = out.cache
        steps.append(ours.lm_logits(out.hidden, inject))
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=0)
    assert cache[0][0].shape[2] == tgt.shape[1] and cache[0][2].shape[2] == src.shape[1]


@torch.no_grad()
def test_value_hook_changes_its_layer_and_no_layer_below():
    ours = BartBackbone.from_hf(tiny_bart()).eval()
    src, src_mask = batch(2, 6, seed=6)
    tgt, _ = batch(2, 5, seed=7)
    enc = ours.encode(src, src_mask).hidden
    plain = ours.decode(tgt, enc, src_mask, return_layers=True).layers
    hooked = ours.decode(tgt, enc, src_mask, return_layers=True,
                         inject=DecoderInjection(values={1: lambda v: 2 * v})).layers
    torch.testing.assert_close(hooked[0], plain[0], atol=0, rtol=0)
    assert not torch.allclose(hooked[1], plain[1])
    identity = ours.decode(tgt, enc, src_mask, return_layers=True,
                           inject=DecoderInjection(values={i: lambda v: v for i in range(LAYERS)})).layers
    torch.testing.assert_close(identity[-1], plain[-1], atol=1e-6, rtol=0)


@torch.no_grad()
def test_embed_memory_and_softmax_hooks_reach_the_logits():
    ours = BartBackbone.from_hf(tiny_bart()).eval()
    src, src_mask = batch(2, 6, seed=8)
    tgt, _ = batch(2, 5, seed=9)
    enc = ours.encode(src, src_mask).hidden
    plain_hidden = ours.decode(tgt, enc, src_mask).hidden
    plain = ours.lm_logits(plain_hidden)
    full = _hooks(ours, 2)
    for name in ("embed", "memory"):
        inject = DecoderInjection(**{name: getattr(full, name)})
        assert not torch.allclose(ours.lm_logits(ours.decode(tgt, enc, src_mask, inject=inject).hidden), plain)
    zero = DecoderInjection(embed=torch.zeros(2, D))
    torch.testing.assert_close(ours.decode(tgt, enc, src_mask, inject=zero).hidden, plain_hidden, atol=0, rtol=0)
    softmax = DecoderInjection(softmax=full.softmax)
    torch.testing.assert_close(ours.lm_logits(plain_hidden, softmax),
                               ours.lm_logits(plain_hidden + full.softmax[:, None]), atol=1e-6, rtol=0)


def test_build_from_config_and_over_long_inputs_name_the_limit():
    cfg = BackboneConfig(n_layer=2, n_embd=16, n_head=2, n_positions=8, dropout=0.0)
    ours = BartBackbone.build(cfg, 40, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    assert (ours.n_layer, ours.n_encoder_layer, ours.n_embd, ours.wte.num_embeddings) == (2, 2, 16, 40)
    assert ours.bart.config.decoder_start_token_id == 2
    with pytest.raises(ValueError, match="source of 9 tokens exceeds .* 8 positions"):
        ours.encode(torch.ones(1, 9, dtype=torch.long))
    with pytest.raises(ValueError, match="n_embd .* divisible"):
        BartBackbone.build(BackboneConfig(n_embd=10, n_head=3), 40, bos_token_id=1, eos_token_id=2, pad_token_id=0)


def test_pretrained_loads_from_a_local_directory_with_its_logits_bias(tmp_path):
    hf = tiny_bart(seed=1)
    hf.save_pretrained(tmp_path / "bart")
    cfg = BackboneConfig(pretrained=str(tmp_path / "bart"))
    ours = BartBackbone.build(cfg, V, bos_token_id=0, eos_token_id=2, pad_token_id=1).eval()
    torch.testing.assert_close(ours.final_logits_bias, hf.final_logits_bias, atol=0, rtol=0)
    torch.testing.assert_close(ours.wte.weight, hf.model.shared.weight, atol=0, rtol=0)


SHAPES = [dict(vocab_size=V, d_model=D, encoder_layers=3, decoder_layers=2, encoder_attention_heads=4,
               decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=48, max_position_embeddings=24,
               pad_token_id=1),
          dict(vocab_size=40, d_model=24, encoder_layers=1, decoder_layers=2, encoder_attention_heads=2,
               decoder_attention_heads=2, encoder_ffn_dim=40, decoder_ffn_dim=40, max_position_embeddings=8,
               pad_token_id=0, scale_embedding=True, init_std=0.05, activation_function="relu")]


@pytest.mark.parametrize("shape", SHAPES)
def test_a_seed_gives_the_weights_and_random_stream_of_transformers_bart(shape):
    """Our BartModel draws its initial weights as HF's BartModel(config) does (every number recorded
    with the latter's weights stays valid, and so does whatever the seed draws after the backbone);
    the same parameters in the same order (an optimizer's saved state lines up)."""
    torch.manual_seed(3)
    hf, hf_next = HFBartModel(BartConfig(**shape)), torch.rand(4)
    torch.manual_seed(3)
    ours, ours_next = BartModel(OurConfig(**shape)), torch.rand(4)
    expected, got = hf.state_dict(), ours.state_dict()
    assert list(got) == list(expected) and all(torch.equal(got[k], expected[k]) for k in expected)
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in hf.named_parameters()]
    assert torch.equal(ours_next, hf_next)
    assert ours.encoder.embed_tokens.weight is ours.decoder.embed_tokens.weight is ours.shared.weight


@torch.no_grad()
def test_relu_and_scaled_embeddings_change_our_pass_as_they_change_transformers():

    ours = BartBackbone(BartModel(OurConfig(**{**SHAPES[1], "dropout": 0.0}))).eval()
    src, src_mask = batch(2, 7, seed=1, pad_last=2)
    tgt, _ = batch(2, 5, seed=2)
    src, tgt = src % 40, tgt % 40
    expected = hf_bart(ours)(input_ids=src, attention_mask=src_mask, decoder_input_ids=tgt).logits
    got = ours.lm_logits(ours.decode(tgt, ours.encode(src, src_mask).hidden, src_mask).hidden)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_the_config_round_trips_through_transformers_and_old_checkpoints_load():
    ours = OurConfig(**SHAPES[1])
    assert OurConfig.from_dict(BartConfig.from_dict(ours.to_dict()).to_dict()) == ours
    old = BartConfig(**SHAPES[0]).to_dict()  # what checkpoints saved before the BART modules were ours
    assert OurConfig.from_dict(old) == OurConfig(**SHAPES[0])
    with pytest.raises(ValueError, match="model_type 'gpt2'"):
        OurConfig.from_dict({**old, "model_type": "gpt2"})
    with pytest.raises(ValueError, match="divisible"):
        OurConfig(d_model=10, encoder_attention_heads=3)


def test_a_model_pickles():
    """torch.save(model) and spawned processes pickle the module (activations included)."""
    model = BartModel(OurConfig(**SHAPES[1]))
    copy = pickle.loads(pickle.dumps(model))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), copy.state_dict().values()))


def test_a_pretrained_directory_loads_its_weights_resized_to_the_vocab(tmp_path):
    hf = tiny_bart(seed=1)
    hf.save_pretrained(tmp_path / "bart")
    saved = BartForConditionalGeneration.from_pretrained(tmp_path / "bart").model.state_dict()
    cfg = BackboneConfig(pretrained=str(tmp_path / "bart"))
    same = BartBackbone.build(cfg, V, bos_token_id=0, eos_token_id=2, pad_token_id=1)
    assert all(torch.equal(same.bart.state_dict()[k], saved[k]) for k in saved)
    assert all(p.requires_grad and p.device.type == "cpu" for p in same.parameters())
    torch.manual_seed(1)
    grown, grown_next = BartBackbone.build(cfg, V + 3, bos_token_id=0, eos_token_id=2, pad_token_id=1), torch.rand(4)
    torch.manual_seed(1)  # transformers' own load and resize: the same new rows, the same draws after
    hf = BartForConditionalGeneration.from_pretrained(tmp_path / "bart")
    hf.resize_token_embeddings(V + 3)
    assert torch.equal(grown.wte.weight, hf.model.shared.weight) and torch.equal(grown_next, torch.rand(4))
    assert grown.bart.config.vocab_size == V + 3
