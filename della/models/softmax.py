"""Softmax paradigm (the paper's §3.3): W_s z added to the last-layer (ln_f) states before the
LM head, so z meets the hidden states only at the output."""

from __future__ import annotations

from della.models.single_latent import SingleLatentVAE


class SoftmaxVAE(SingleLatentVAE):
    registry_name = "softmax"

    def __init__(self, config, backbone, vocab, **kwargs):
        super().__init__(config, backbone, vocab, **kwargs)
        self.latent_to_hidden = self.latent_projection(backbone.n_embd)

    def output_logits(self, hidden, z):
        return super().output_logits(hidden + self.latent_to_hidden(z[:, 0])[:, None, :], z)
