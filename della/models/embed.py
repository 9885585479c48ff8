"""Embedding paradigm (Optimus `latent_as_gpt_emb`): W_e z, no bias, added to every input embedding."""

from __future__ import annotations

from della.models.backbone import Injection
from della.models.single_latent import SingleLatentVAE


class EmbedVAE(SingleLatentVAE):
    registry_name = "embed"

    def __init__(self, config, backbone, vocab, **kwargs):
        super().__init__(config, backbone, vocab, **kwargs)
        self.latent_to_embedding = self.latent_projection(backbone.n_embd)

    def injection(self, z):
        return Injection(embed=self.latent_to_embedding(z[:, 0]))  # (N, d), broadcast over positions
