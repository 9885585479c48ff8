"""Memory paradigm (Optimus `latent_as_gpt_memory`): W_m z (no bias) split into one vector per
layer, used as one extra attention slot that is both key and value (reference §9.3). Token
positions stay 0..T-1: the slot has no position of its own."""

from __future__ import annotations

from della.models.backbone import Injection
from della.models.single_latent import SingleLatentVAE


class MemoryVAE(SingleLatentVAE):
    registry_name = "memory"

    def __init__(self, config, backbone, vocab, **kwargs):
        super().__init__(config, backbone, vocab, **kwargs)
        self.latent_to_memory = self.latent_projection(backbone.n_layer * backbone.n_embd)

    def injection(self, z):
        m = self.latent_to_memory(z[:, 0])  # (N, L*d)
        return Injection(memory=list(m.chunk(self.backbone.n_layer, dim=-1)))  # L x (N, d)
