"""The plain GPT-2 language model: the degenerate latent model with no groups, so the shared
estimators give its exact perplexity (log p(x) needs no importance sampling)."""

from __future__ import annotations

from dataclasses import dataclass

from della.models.base import MODELS, LatentModel


@dataclass(frozen=True)
class GPT2LMConfig:
    tie_lm_head: bool = True


@MODELS.register("gpt2")
class GPT2LM(LatentModel):
    config_class = GPT2LMConfig
    registry_name = "gpt2"
    paper_name = "GPT-2"  # the row label of the paper's tables
    has_latent = False
