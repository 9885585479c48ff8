"""One interface for every model: the estimators (IW-NLL, ELBO, KL, MI, AU) are written once.

A model's latent is a stack of G *groups* of size p: G = 0 for the plain LM, 1 for the
single-latent VAEs, one per injected layer for DELLA. Latents travel as tensors (N, G, p);
posterior quantities carry a leading sample axis K.

Conditional tasks (CVAE) extend this interface rather than fork it: a condition (the encoded
source) becomes one more optional argument of `encode`, `sample_prior` and `decode`, which the
unconditional models ignore.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GPT2Config, GPT2Model

from della.config import BackboneConfig
from della.io import atomic_write_binary, atomic_write_json, replace_dir
from della.models.backbone import Backbone, Injection, KVCache
from della.registry import Registry

MODELS: Registry[type["LatentModel"]] = Registry("model")
LOG_2PI = math.log(2 * math.pi)


@dataclass(frozen=True)
class Vocab:
    size: int
    bos_id: int
    eos_id: int
    pad_id: int


@dataclass
class Posterior:
    z: torch.Tensor  # (K, B, G, p) samples, each group drawn given the groups below it
    log_q: torch.Tensor  # (K, B, G) log q(z_g | x, z_<g)
    log_p: torch.Tensor  # (K, B, G) log p(z_g | z_<g)
    kl: torch.Tensor  # (K, B, G) analytic KL(q(z_g|x,z_<g) || p(z_g|z_<g)) on the sampled path
    mean: torch.Tensor  # (K, B, G, p) posterior means on the sampled path
    logvar: torch.Tensor  # (K, B, G, p)


@dataclass
class LossOutput:
    loss: torch.Tensor  # scalar training objective
    ce: torch.Tensor  # (B,) reconstruction cross-entropy summed over predicted tokens
    kl: torch.Tensor  # (B, G) analytic KL per group, before any threshold
    bow: torch.Tensor | None  # (B,) bag-of-words loss when enabled
    n_tokens: torch.Tensor  # (B,) predicted tokens per sentence


def gaussian_log_density(z: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(z; mean, diag(exp(logvar))), summed over the last axis; in fp32 under bf16 autocast
    (a bf16 sum over p dimensions would lose the IW weights' precision)."""
    z, mean, logvar = z.float(), mean.float(), logvar.float()
    return -0.5 * (LOG_2PI + logvar + (z - mean) ** 2 * torch.exp(-logvar)).sum(-1)


def gaussian_kl(mq, lq, mp, lp) -> torch.Tensor:
    """KL(N(mq, e^lq) || N(mp, e^lp)) for diagonal Gaussians, summed over the last axis, in fp32."""
    mq, lq, mp, lp = mq.float(), lq.float(), mp.float(), lp.float()
    return 0.5 * (lp - lq + (torch.exp(lq) + (mq - mp) ** 2) * torch.exp(-lp) - 1).sum(-1)


class AttentionPooling(nn.Module):
    """x = sum_t softmax_t(gelu(<H_t, w>)) H_t  (TransformerCVAE's AverageSelfAttention)."""

    def __init__(self, d: int):
        super().__init__()
        self.w = nn.Parameter(torch.randn(d) * 0.02)

    def forward(self, h: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        scores = F.gelu(h @ self.w, approximate="tanh")  # (N, T)
        if mask is not None:
            scores = scores.masked_fill(mask == 0, float("-inf"))
        return (scores.softmax(-1).unsqueeze(-1) * h).sum(1)  # (N, d)


class FirstTokenPooling(nn.Module):
    """x = H_0, the state of the first token (<s>): the paper's choice (§4, App. A.1), and
    Optimus's [CLS]. The encoder pass is bidirectional, so this state sees the whole sentence."""

    def forward(self, h: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return h[:, 0]


POOLING_KINDS = ("attention", "first_token")


def build_pooling(kind: str, d: int) -> nn.Module:
    """The sentence representation x from encoder states (N, T, d); `kind` is a model's `pool` arg,
    checked against POOLING_KINDS by the model's config."""
    return AttentionPooling(d) if kind == "attention" else FirstTokenPooling()


class LatentModel(nn.Module):
    """Base class: LM head, decoder pass, reconstruction, loss, save/load."""

    config_class: ClassVar[type]
    registry_name: ClassVar[str]

    def __init__(self, config, backbone: Backbone, vocab: Vocab):
        super().__init__()
        self.config, self.backbone, self.vocab = config, backbone, vocab
        d = backbone.n_embd
        if getattr(config, "tie_lm_head", True):
            self.lm_head = None  # logits = h @ wte^T
        else:  # the official DELLA code: a fresh, untied head (reference §1)
            self.lm_head = nn.Linear(d, vocab.size, bias=False)

    # --- latent interface (overridden by latent models) ---------------------------------------
    has_latent: ClassVar[bool] = True  # False for the plain LM: known before a model is built
    n_groups: int = 0
    latent_size: int = 0

    def encode(self, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Per-group features (B, G, d) of the encoder pass; they do not depend on z."""
        return input_ids.new_zeros((input_ids.shape[0], 0, self.backbone.n_embd), dtype=torch.float)

    def sample_posterior(self, features: torch.Tensor, k: int) -> Posterior:
        B = features.shape[0]
        empty = features.new_zeros((k, B, 0))
        return Posterior(z=features.new_zeros((k, B, 0, 0)), log_q=empty, log_p=empty, kl=empty,
                         mean=features.new_zeros((k, B, 0, 0)), logvar=features.new_zeros((k, B, 0, 0)))

    def sample_prior(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.zeros(n, 0, 0, device=self.device)

    def log_q_matrix(self, z: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """log q(z_i | x_j) for every pair: z (M, G, p), features (N, G, d) -> (M, N)."""
        return z.new_zeros((z.shape[0], features.shape[0]))

    def injection(self, z: torch.Tensor) -> Injection:
        return Injection()

    # --- decoder ---------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.backbone.wte.weight.device

    def output_logits(self, hidden: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        if self.lm_head is None:
            return hidden @ self.backbone.wte.weight.T
        return self.lm_head(hidden)

    def decode(self, input_ids: torch.Tensor, z: torch.Tensor, cache: KVCache | None = None,
               use_cache: bool = False) -> tuple[torch.Tensor, KVCache | None]:
        """Causal pass with z injected: logits (N, T, V) and the updated KV cache."""
        out = self.backbone(input_ids, causal=True, cache=cache, inject=self.injection(z), use_cache=use_cache)
        return self.output_logits(out.hidden, z), out.cache

    def token_nll(self, input_ids: torch.Tensor, mask: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """-log p(x | z) per sentence (N,), summed over the predicted tokens (all but <s>)."""
        out = self.backbone(input_ids, causal=True, inject=self.injection(z))
        logits = self.output_logits(out.hidden[:, :-1], z).float()  # the last position predicts nothing; fp32 CE
        N, T, V = logits.shape
        ce = F.cross_entropy(logits.reshape(N * T, V), input_ids[:, 1:].reshape(N * T), reduction="none")
        return (ce.view(N, T) * mask[:, 1:]).sum(1)

    # --- training objective --------------------------------------------------------------------
    def aggregate_kl(self, kl: torch.Tensor) -> torch.Tensor:
        """(B, G) -> (B,): per-group threshold max(KL_g, λ), then sum over groups (a true ELBO)."""
        threshold = getattr(self.config, "kl_threshold", 0.0)
        if threshold > 0:
            kl = kl.clamp(min=threshold)
        return kl.sum(-1)

    def forward(self, input_ids: torch.Tensor, mask: torch.Tensor, beta: float) -> LossOutput:
        """The training objective, so DistributedDataParallel can wrap any model."""
        return self.loss(input_ids, mask, beta)

    def loss(self, input_ids: torch.Tensor, mask: torch.Tensor, beta: float) -> LossOutput:
        post = self.sample_posterior(self.encode(input_ids, mask), k=1)
        z, kl = post.z[0], post.kl[0]
        ce = self.token_nll(input_ids, mask, z)
        bow = self.bow_loss(input_ids, mask, z)
        total = ce + beta * self.aggregate_kl(kl)
        if bow is not None:
            total = total + self.config.bow_weight * bow
        return LossOutput(loss=total.mean(), ce=ce, kl=kl, bow=bow, n_tokens=mask[:, 1:].sum(1))

    def bow_loss(self, input_ids, mask, z) -> torch.Tensor | None:
        return None

    # --- persistence -----------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path) -> None:
        """config.json + model.pt, written into a temp dir and renamed, so a checkpoint is whole."""
        directory = Path(directory)
        directory.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}."))
        meta = {"model": self.registry_name, "model_args": dataclasses.asdict(self.config),
                "gpt2_config": self.backbone.gpt2.config.to_dict(), "vocab": dataclasses.asdict(self.vocab)}
        atomic_write_json(tmp / "config.json", meta)
        atomic_write_binary(tmp / "model.pt", lambda f: torch.save(self.state_dict(), f))
        replace_dir(tmp, directory)

    @classmethod
    def from_pretrained(cls, directory: str | Path, map_location: str | torch.device = "cpu") -> "LatentModel":
        meta = json.loads((Path(directory) / "config.json").read_text())
        model = build_model(meta["model"], meta["model_args"], vocab=Vocab(**meta["vocab"]),
                            gpt2_config=GPT2Config.from_dict(meta["gpt2_config"]))
        model.load_state_dict(torch.load(Path(directory) / "model.pt", map_location=map_location))
        return model


def build_model(name: str, model_args: dict[str, Any], vocab: Vocab,
                backbone_config: BackboneConfig | None = None,
                gpt2_config: GPT2Config | None = None) -> LatentModel:
    """Build a registered model on a fresh (or pretrained) GPT-2 backbone."""
    cls = MODELS.get(name)
    fields = {f.name for f in dataclasses.fields(cls.config_class)}
    unknown = sorted(set(model_args) - fields)
    if unknown:
        raise ValueError(f"model_args for {name!r}: unknown key(s) {unknown}; valid keys: {sorted(fields)}")
    config = cls.config_class(**model_args)
    if gpt2_config is not None:
        backbone = Backbone(GPT2Model(gpt2_config))
    else:
        backbone = Backbone.build(backbone_config or BackboneConfig(), vocab.size, bos_token_id=vocab.bos_id,
                                  eos_token_id=vocab.eos_id, pad_token_id=vocab.pad_id)
    return cls(config, backbone, vocab)
