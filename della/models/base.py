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

from della.config import BackboneConfig
from della.io import atomic_write_binary, atomic_write_json, replace_dir
from della.models.backbone import Backbone, Injection, KVCache
from della.models.bart_backbone import BartBackbone
from della.models.registry import MODELS

LOG_2PI = math.log(2 * math.pi)


@dataclass(frozen=True)
class Vocab:
    size: int
    bos_id: int
    eos_id: int
    pad_id: int


@dataclass
class Condition:
    """The source of a conditional task (CVAE) for one batch, as the condition encoder reads it.

    For the GPT-2 CVAE the decoder sequence is source + </s> + target + </s>, and `ids` is its
    prefix source + </s>. `target_start` (B,) is the index of each row's first target token in the
    decoder sequence: no earlier position is ever predicted, so no source token enters the loss.

    An encoder-decoder (BART) reads the source in a pass of its own: `LatentModel.encode_source`
    attaches that pass's results (`source_states`, `features`), so the condition prior, the posterior
    and the decoder's cross-attention of one batch share one encoder pass over the source.
    """

    ids: torch.Tensor  # (B, S) right-padded
    mask: torch.Tensor  # (B, S) 1 on real tokens
    target_start: torch.Tensor  # (B,) long
    source_states: torch.Tensor | None = None  # (B, S, d) the encoder's output the decoder cross-attends to
    features: torch.Tensor | None = None  # (B, G, d) the condition features c pooled from that pass

    def repeat(self, n: int) -> "Condition":
        """Each row n times, sample-major (as `ids.repeat(n, 1)` lays out K posterior samples)."""
        return self.map(lambda t: t.repeat(n, *(1,) * (t.dim() - 1)))

    def rows(self, index: torch.Tensor) -> "Condition":
        return self.map(lambda t: t[index])

    def map(self, fn) -> "Condition":
        """fn applied to each tensor (e.g. a device copy)."""
        return Condition(**{f.name: None if getattr(self, f.name) is None else fn(getattr(self, f.name))
                            for f in dataclasses.fields(self)})


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


def standard_normal(shape: tuple[int, ...], generator: torch.Generator | None, device) -> torch.Tensor:
    """N(0, I) draws on `device` from `generator`, which may live elsewhere: generation seeds a host
    generator, which CUDA draws refuse, and which gives the same latents on every device."""
    where = device if generator is None else generator.device
    return torch.randn(shape, generator=generator, device=where).to(device)


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


def build_pooling(kind: str, d: int) -> nn.Module:
    """The sentence representation x from encoder states (N, T, d); `kind` is a model's `pool` arg,
    checked against della.models.configs.POOLING_KINDS by the model's config."""
    return AttentionPooling(d) if kind == "attention" else FirstTokenPooling()


class LatentModel(nn.Module):
    """Base class: LM head, decoder pass, reconstruction, loss, save/load.

    A `conditional` model (a CVAE) takes a `Condition` in every pass: its prior is p(z | c), its
    posterior q(z | x, c), and its encoder features hold both, [x; c] on the last axis (B, G, 2d).
    Only a conditional model builds the condition's modules, so an unconditional model's weights
    (and its initialisation's random draws) are those it had before CVAEs existed.
    """

    registry_name: ClassVar[str]  # its name in della/models/catalog.py

    def __init__(self, config, backbone: Backbone, vocab: Vocab, conditional: bool = False):
        super().__init__()
        if conditional and not MODELS.get(self.registry_name).supports_condition:
            raise ValueError(f"model {self.registry_name!r} has no conditional (CVAE) version")
        self.config, self.backbone, self.vocab, self.conditional = config, backbone, vocab, conditional
        d = backbone.n_embd
        if getattr(config, "tie_lm_head", True):
            self.lm_head = None  # logits = h @ wte^T
        else:  # the official DELLA code: a fresh, untied head (reference §1)
            self.lm_head = nn.Linear(d, vocab.size, bias=False)

    # --- latent interface (overridden by latent models) ---------------------------------------
    n_groups: int = 0
    latent_size: int = 0

    def encode(self, input_ids: torch.Tensor, mask: torch.Tensor, condition: Condition | None = None) -> torch.Tensor:
        """Per-group features (B, G, d) of the encoder pass, (B, G, 2d) = [x; c] for a CVAE; they
        do not depend on z."""
        self.check_condition(condition)
        return input_ids.new_zeros((input_ids.shape[0], 0, self.feature_size), dtype=torch.float)

    @property
    def feature_size(self) -> int:
        return self.backbone.n_embd * (2 if self.conditional else 1)

    def encode_source(self, condition: Condition | None) -> Condition | None:
        """The condition with this model's own encoder pass over the source attached, for the passes
        of one batch to share (an encoder-decoder's); a decoder-only model reads the source as its
        sequence's prefix, so its condition comes back as it is."""
        return condition

    def check_condition(self, condition: Condition | None) -> None:
        """A CVAE needs its condition in every pass; an unconditional model takes none."""
        if self.conditional and condition is None:
            raise ValueError(f"model {self.registry_name!r} is conditional: pass the batch's condition (source)")
        if not self.conditional and condition is not None:
            raise ValueError(f"model {self.registry_name!r} is unconditional: it takes no condition")

    def split_features(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """[x; c] -> (x, c) for a CVAE, (x, None) otherwise."""
        if not self.conditional:
            return features, None
        x, c = features.chunk(2, dim=-1)
        return x, c

    def sample_posterior(self, features: torch.Tensor, k: int) -> Posterior:
        B = features.shape[0]
        empty = features.new_zeros((k, B, 0))
        return Posterior(z=features.new_zeros((k, B, 0, 0)), log_q=empty, log_p=empty, kl=empty,
                         mean=features.new_zeros((k, B, 0, 0)), logvar=features.new_zeros((k, B, 0, 0)))

    def sample_prior(self, n: int, generator: torch.Generator | None = None,
                     condition: Condition | None = None) -> torch.Tensor:
        """n latents (n, G, p) from the prior, p(z | c) for a CVAE (the condition's n rows)."""
        self.check_condition(condition)
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
               use_cache: bool = False, condition: Condition | None = None) -> tuple[torch.Tensor, KVCache | None]:
        """Causal pass with z injected: logits (N, T, V) and the updated KV cache. The GPT-2 CVAE
        reads its source as the sequence's prefix, so `condition` is not needed here."""
        out = self.backbone(input_ids, causal=True, cache=cache, inject=self.injection(z), use_cache=use_cache)
        return self.output_logits(out.hidden, z), out.cache

    @staticmethod
    def predicted_mask(mask: torch.Tensor, condition: Condition | None) -> torch.Tensor:
        """(N, T-1): which next tokens enter the loss: every real token after the first, and for a
        CVAE only those from the target's first token on."""
        predicted = mask[:, 1:]
        if condition is None:
            return predicted
        positions = torch.arange(1, mask.shape[1], device=mask.device)[None, :]
        return predicted * (positions >= condition.target_start[:, None])

    def token_nll(self, input_ids: torch.Tensor, mask: torch.Tensor, z: torch.Tensor,
                  condition: Condition | None = None) -> torch.Tensor:
        """-log p(x | z[, c]) per sentence (N,), summed over the predicted tokens (all but <s>;
        the target only, for a CVAE)."""
        # the last token predicts nothing, so it is not decoded (causal: the other positions are unchanged)
        logits, _ = self.decode(input_ids[:, :-1], z, condition=condition)
        logits = logits.float()  # fp32 CE under bf16 autocast
        N, T, V = logits.shape
        ce = F.cross_entropy(logits.reshape(N * T, V), input_ids[:, 1:].reshape(N * T), reduction="none")
        return (ce.view(N, T) * self.predicted_mask(mask, condition)).sum(1)

    # --- training objective --------------------------------------------------------------------
    def aggregate_kl(self, kl: torch.Tensor) -> torch.Tensor:
        """(B, G) -> (B,): per-group threshold max(KL_g, λ), then sum over groups (a true ELBO)."""
        threshold = getattr(self.config, "kl_threshold", 0.0)
        if threshold > 0:
            kl = kl.clamp(min=threshold)
        return kl.sum(-1)

    def forward(self, input_ids: torch.Tensor, mask: torch.Tensor, beta: float | torch.Tensor,
                condition: Condition | None = None) -> LossOutput:
        """The training objective, so DistributedDataParallel can wrap any model."""
        return self.loss(input_ids, mask, beta, condition)

    def loss(self, input_ids: torch.Tensor, mask: torch.Tensor, beta: float | torch.Tensor,
             condition: Condition | None = None) -> LossOutput:
        condition = self.encode_source(condition)
        post = self.sample_posterior(self.encode(input_ids, mask, condition), k=1)
        z, kl = post.z[0], post.kl[0]
        ce = self.token_nll(input_ids, mask, z, condition)
        predicted = self.predicted_mask(mask, condition)
        bow = self.bow_loss(input_ids, predicted, z)
        total = ce + beta * self.aggregate_kl(kl)
        if bow is not None:
            total = total + self.config.bow_weight * bow
        return LossOutput(loss=total.mean(), ce=ce, kl=kl, bow=bow, n_tokens=predicted.sum(1))

    def bow_loss(self, input_ids, predicted, z) -> torch.Tensor | None:
        """The bag-of-words loss (reference §2.6) of a model with a `bow` head (config `use_bow`):
        -sum_t log softmax(head(W z_top))[x_t] over the predicted tokens (predicted (N, T-1), the loss
        mask of input_ids[:, 1:]). The LM head is the plain one, without a paradigm's own use of z."""
        bow = getattr(self, "bow", None)
        if bow is None:
            return None
        logits = LatentModel.output_logits(self, bow(z[:, -1])[:, None, :], z)[:, 0]  # (N, V)
        logp = logits.float().log_softmax(-1).gather(1, input_ids[:, 1:])  # (N, T-1), fp32 under bf16 too
        return -(logp * predicted).sum(1)

    # --- persistence -----------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path) -> None:
        """config.json + model.pt, written into a temp dir and renamed, so a checkpoint is whole."""
        directory = Path(directory)
        directory.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}."))
        meta = {"model": self.registry_name, "model_args": dataclasses.asdict(self.config),
                "backbone": backbone_architecture(self.backbone), "vocab": dataclasses.asdict(self.vocab),
                "conditional": self.conditional}
        atomic_write_json(tmp / "config.json", meta)
        atomic_write_binary(tmp / "model.pt", lambda f: torch.save(self.state_dict(), f))
        replace_dir(tmp, directory)

    @classmethod
    def from_pretrained(cls, directory: str | Path, map_location: str | torch.device = "cpu") -> "LatentModel":
        meta = json.loads((Path(directory) / "config.json").read_text())
        # checkpoints written before the BART backbone hold only "gpt2_config"
        architecture = meta.get("backbone") or {"kind": "gpt2", "config": meta["gpt2_config"]}
        model = build_model(meta["model"], meta["model_args"], vocab=Vocab(**meta["vocab"]),
                            conditional=meta.get("conditional", False), architecture=architecture)
        model.load_state_dict(torch.load(Path(directory) / "model.pt", map_location=map_location))
        return model


def backbone_architecture(backbone: Backbone | BartBackbone) -> dict[str, Any]:
    """{"kind", "config"}: what rebuilds the backbone's exact shape (its HF config) for loading."""
    if isinstance(backbone, BartBackbone):
        return {"kind": "bart", "config": backbone.bart.config.to_dict()}
    return {"kind": "gpt2", "config": backbone.gpt2.config.to_dict()}


def build_model(name: str, model_args: dict[str, Any], vocab: Vocab,
                backbone_config: BackboneConfig | None = None, architecture: dict[str, Any] | None = None,
                conditional: bool = False) -> LatentModel:
    """Build a registered model on a fresh (or pretrained) backbone of `backbone_config.kind`, or on
    the exact architecture of a saved one (`architecture`, as `backbone_architecture` writes it; its
    weights loaded after); on BART the model's BART version. `conditional`: its CVAE."""
    backbone_config = backbone_config or BackboneConfig()
    kind = architecture["kind"] if architecture else backbone_config.kind
    spec = MODELS.get(name)
    cls = spec.model_class(kind)
    config = spec.make_config(model_args, f"model_args of {name!r}")
    builder = BartBackbone if kind == "bart" else Backbone
    if architecture:
        backbone = builder.from_config(architecture["config"])
    else:
        backbone = builder.build(backbone_config, vocab.size, bos_token_id=vocab.bos_id,
                                 eos_token_id=vocab.eos_id, pad_token_id=vocab.pad_id)
    return cls(config, backbone, vocab, conditional=conditional)
