"""The plain GPT-2 language model: the degenerate latent model with no groups, so the shared
estimators give its exact perplexity (log p(x) needs no importance sampling)."""

from __future__ import annotations

from della.models.base import LatentModel


class GPT2LM(LatentModel):
    registry_name = "gpt2"
