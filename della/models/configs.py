"""Every model's `model_args`: one frozen dataclass per kind of model, torch-free.

A `models:` entry of the workflow config is checked against its model's dataclass when the DAG is
built (della.config.check_model_args), so this module imports nothing heavy: every dry run and every
Slurm job's re-parse of the Snakefile reads it. The model modules import their dataclass from here.
"""

from __future__ import annotations

from dataclasses import dataclass

POOLING_KINDS = ("attention", "first_token")  # how encoder states become x (della.models.base.build_pooling)
KL_LAYER_CHOICES = ("all", "first", "last")  # DELLA's layers with a posterior (della.models.della.KL_LAYERS)


@dataclass(frozen=True)
class GPT2LMConfig:
    """`gpt2` and `bart`: the plain language models (no latent)."""

    tie_lm_head: bool = True


@dataclass(frozen=True)
class SingleLatentConfig:
    """`embed`, `memory` and `softmax`: one global z (della.models.single_latent)."""

    latent_size: int = 32
    kl_threshold: float = 0.0  # per-example max(KL, λ); 0 = off
    tie_lm_head: bool = True
    pool: str = "attention"  # TransformerCVAE's encoder | first_token (Optimus's [CLS], the paper's DELLA)
    bn_gamma: float | None = None  # BN-VAE (Table 5): batch-normalised posterior means with this fixed γ
    use_bow: bool = False  # Table 5's "+BOW": the bag-of-words loss on z, as DELLA's
    bow_weight: float = 0.2

    def __post_init__(self):
        if self.pool not in POOLING_KINDS:
            raise ValueError(f"model_args.pool = {self.pool!r}; expected one of {POOLING_KINDS}")


@dataclass(frozen=True)
class OptimusConfig:
    """`optimus`: a BERT encoder, one z injected as Embedding + Memory."""

    latent_size: int = 32
    kl_threshold: float = 0.0  # per-example max(KL, λ); 0 = off
    tie_lm_head: bool = True
    encoder_pretrained: str | None = None  # BERT name or local dir; None: from scratch, sized like the backbone


@dataclass(frozen=True)
class DellaConfig:
    """`della` and `della-official`'s preset: layer-wise latents (della.models.della documents each switch)."""

    latent_size: int = 32
    lmf_rank: int = 4
    lmf_mode: str = "paper"  # paper: product of sums (Eq. 9, and the code) | lowrank: sum of products
    begin_layer: int = 0
    end_layer: int | None = None  # None: the last layer (an explicit 0 means layer 0, unlike the code)
    kl_threshold: float = 0.0  # per example and layer: max(KL_l, λ)
    kl_aggregate: str = "sum"  # sum (paper ELBO) | mean (official code, D1)
    first_prior: str = "standard"  # standard: p(z_b) = N(0, I) | learned (official code, D5)
    tie_lm_head: bool = True  # official code: False, a fresh untied head (D4)
    pool: str = "first_token"  # the paper's x^(l) | attention (official code, reference §2.2)
    pool_mask: bool = True  # attention pooling only; official code: False, pads enter the pooling (D6)
    clamp: float | None = None  # official code: 5.0 on mu and log s2 (D7)
    use_bow: bool = False
    bow_weight: float = 0.2
    # Table 4's ablations and Table 5's BN-VAE; the defaults are the paper's model
    fusion: str = "lmf"  # lmf: Eq. 9 | add: V' = V + W_l z_l, no tensor product (−LTP)
    shared_latent: bool = False  # −LW: one z, inferred at the top latent layer, fused into every layer
    recurrence: bool = True  # False (Separate): every z_l is inferred and drawn like the first, without z_<l
    kl_layers: str = "all"  # all | first | last: the layers with a posterior (the others: q = prior, KL 0)
    bn_gamma: float | None = None  # BN-VAE: batch-normalised posterior means with this fixed γ

    @property
    def reads_pads(self) -> bool:
        """Whether a batch's padding enters the numbers: the official attention pooling over pads (D6),
        so `train.pad_to_multiple` is part of the training recipe (della.config.RunConfig.training_recipe)."""
        return self.pool == "attention" and not self.pool_mask

    def __post_init__(self):
        choices = {"lmf_mode": ("paper", "lowrank"), "kl_aggregate": ("sum", "mean"),
                   "first_prior": ("standard", "learned"), "pool": POOLING_KINDS, "fusion": ("lmf", "add"),
                   "kl_layers": KL_LAYER_CHOICES}
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ValueError(f"model_args.{key} = {getattr(self, key)!r}; expected one of {allowed}")
