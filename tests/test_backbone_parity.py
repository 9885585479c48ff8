"""Known answers from transformers' own GPT-2: with no latent injected our decoder pass equals its
pass, a seed gives its initial weights, and its configs and pretrained directories load."""

from __future__ import annotations

import pickle

import pytest
import torch
from transformers import GPT2Config, GPT2Model

from della.models.backbone import GPT2, Backbone, load_pretrained
from della.models.backbone import GPT2Config as OurConfig
from tests.conftest import hf_gpt2, random_batch, tiny_model


@torch.no_grad()
def test_decoder_without_latent_equals_gpt2_lm_head_model():
    """The plain LM's decode (our forward + tied head) on a right-padded batch."""
    model = tiny_model("gpt2")
    hf = hf_gpt2(model.backbone, head=True)
    ids, mask = random_batch(b=3, t=10, pad_last=4)
    expected = hf(input_ids=ids, attention_mask=mask).logits
    logits, _ = model.decode(ids, model.sample_prior(3))
    real = mask.bool()  # right padding: pad positions are never predicted from
    torch.testing.assert_close(logits[real], expected[real], atol=1e-5, rtol=0)


SHAPES = [dict(vocab_size=50, n_positions=16, n_embd=32, n_layer=3, n_head=4),
          dict(vocab_size=40, n_positions=8, n_embd=24, n_layer=2, n_head=2, n_inner=40, initializer_range=0.05)]


@pytest.mark.parametrize("shape", SHAPES)
def test_a_seed_gives_the_weights_and_random_stream_of_transformers_gpt2model(shape):
    """Our GPT2 draws its initial weights as HF's GPT2Model(config) does: every recorded number made
    with the latter's weights stays valid, and so does whatever the seed draws after the backbone."""
    torch.manual_seed(3)
    hf = GPT2Model(GPT2Config(**shape))
    hf_next = torch.rand(4)
    torch.manual_seed(3)
    ours = GPT2(OurConfig(**shape))
    ours_next = torch.rand(4)
    expected, got = hf.state_dict(), ours.state_dict()
    assert got.keys() == expected.keys()
    assert all(torch.equal(got[k], expected[k]) for k in expected)
    assert torch.equal(ours_next, hf_next)


@torch.no_grad()
def test_the_optional_shape_keys_change_our_pass_as_they_change_transformers():
    shape = {**SHAPES[1], "activation_function": "relu", "scale_attn_by_inverse_layer_idx": True}
    backbone = Backbone(GPT2(OurConfig(**shape))).eval()
    ids = torch.randint(0, shape["vocab_size"], (2, 6), generator=torch.Generator().manual_seed(0))
    expected = hf_gpt2(backbone)(input_ids=ids).last_hidden_state
    torch.testing.assert_close(backbone(ids, causal=True).hidden, expected, atol=1e-5, rtol=0)


def test_the_config_round_trips_through_transformers_and_old_checkpoints_load():
    ours = OurConfig(**SHAPES[1], pad_token_id=3)
    assert OurConfig.from_dict(GPT2Config.from_dict(ours.to_dict()).to_dict()) == ours
    old = GPT2Config(**SHAPES[0]).to_dict()  # what checkpoints saved before GPT2 was ours
    assert OurConfig.from_dict(old) == OurConfig(**SHAPES[0])
    aliased = {"hidden_size": 32, "num_attention_heads": 4, "num_hidden_layers": 3, "max_position_embeddings": 16}
    assert OurConfig.from_dict({"vocab_size": 50, **aliased}) == OurConfig(**SHAPES[0])
    with pytest.raises(ValueError, match="model_type 'bart'"):
        OurConfig.from_dict({**old, "model_type": "bart"})
    with pytest.raises(ValueError, match="cross-attention"):
        OurConfig.from_dict({**old, "add_cross_attention": True})
    with pytest.raises(ValueError, match="activation_function 'swish2'"):
        OurConfig(activation_function="swish2")


def test_a_model_pickles():
    """torch.save(model) and spawned processes pickle the module (activations included)."""
    model = GPT2(OurConfig(**SHAPES[0]))
    copy = pickle.loads(pickle.dumps(model))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), copy.state_dict().values()))


def test_a_pretrained_directory_loads_its_weights_resized_to_the_vocab(tmp_path):
    torch.manual_seed(0)
    GPT2Model(GPT2Config(**SHAPES[0])).save_pretrained(tmp_path)
    saved = GPT2Model.from_pretrained(tmp_path).state_dict()
    same = load_pretrained(str(tmp_path), 50, {"pad_token_id": 7})
    assert same.config.pad_token_id == 7
    assert all(torch.equal(same.state_dict()[k], saved[k]) for k in saved)
    assert all(p.requires_grad and p.device.type == "cpu" for p in same.parameters())
    torch.manual_seed(1)
    grown, grown_next = load_pretrained(str(tmp_path), 53, {}), torch.rand(4)
    assert grown.wte.weight.shape == (53, 32) and torch.equal(grown.wte.weight[:50], saved["wte.weight"])
    torch.manual_seed(1)  # transformers' own load and resize: the same new rows, the same draws after
    hf = GPT2Model.from_pretrained(tmp_path)
    hf.resize_token_embeddings(53)
    assert torch.equal(grown.wte.weight, hf.wte.weight) and torch.equal(grown_next, torch.rand(4))
