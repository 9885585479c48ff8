"""Known answer: with no latent injected, our GPT-2 decoder pass equals Hugging Face's own."""

from __future__ import annotations

import torch
from transformers import GPT2LMHeadModel

from tests.conftest import random_batch, tiny_model


@torch.no_grad()
def test_decoder_without_latent_equals_gpt2_lm_head_model():
    """The plain LM's decode (our forward + tied head) on a right-padded batch."""
    model = tiny_model("gpt2")
    backbone = model.backbone
    hf = GPT2LMHeadModel(backbone.gpt2.config).eval()
    hf.transformer.load_state_dict(backbone.gpt2.state_dict())
    hf.tie_weights()
    ids, mask = random_batch(b=3, t=10, pad_last=4)
    expected = hf(input_ids=ids, attention_mask=mask).logits
    logits, _ = model.decode(ids, model.sample_prior(3))
    real = mask.bool()  # right padding: pad positions are never predicted from
    torch.testing.assert_close(logits[real], expected[real], atol=1e-5, rtol=0)
