"""DELLA (Hu et al., NAACL 2022): layer-wise latent variables fused into attention values.

Encoder and decoder are the same GPT-2 (reference §2.1): the encoder pass is bidirectional with
a padding mask, the decoder pass causal. For each latent layer l = b..e:

  h_l = tanh(W_hh h_{l-1} + W_ih z_{l-1})                  summary of z_<l       (Eq. 7)
  [mu_p; log s2_p] = W_p h_l                                prior p(z_l | z_<l)   (Eq. 8)
  [mu_q; log s2_q] = W_q [x^(l); h_l]                       posterior q(z_l | x, z_<l)
  V'_l = (sum_j W_v^(l,j) [V_l; 1]) * (sum_j W_z^(l,j) [z_l; 1])                   (Eq. 9)

where x^(l) is the state of the first token (<s>) at the output of encoder block l (the paper, §4
and App. A.1; the official code pools all positions by attention: `pool: attention`). The
defaults follow the paper: KL summed over layers (a true ELBO), p(z_b) = N(0, I), tied LM head,
the first token's state, no clamps. Each departure of the official code (reference §10) is a
switch, and the `della-official` preset in config/config.yaml turns them all on.

The ablations of the paper's Table 4 and the BN-VAE trick of its Table 5 are switches too, off by
default: `fusion: add` (−LTP), `shared_latent` (−LW), `recurrence: false` (Separate), `kl_layers`
(KL only at l = 1 or l = L) and `bn_gamma` (BN-VAE). With `kl_layers: first` (or `last`) only that
layer infers z_l from x; every other layer draws z_l from its conditional prior p(z_l | z_<l), in
training and evaluation alike (q = p, so its KL term is 0): the recurrence stays and one KL term is
optimised, and the ELBO, KL, MI and AU stay those of the whole model, as in the paper's Table 4.

As a CVAE (reference §5, the official code): the condition is pooled per latent layer by an extra
encoder pass over the source, c_l, and the prior of layer l takes [h_l; c_l], written here as
W_p h_l + W_c c_l with W_c a Linear without bias (so W_c = 0 gives the unconditional prior, and
the first layer's standard prior becomes N(W_c c_b)). The posterior is unchanged: x^(l) is pooled
over source + target, so the condition reaches it through the encoder's input.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import nn

from della.models.backbone import Injection
from della.models.base import (MODELS, POOLING_KINDS, Condition, LatentModel, Posterior, build_pooling,
                               gaussian_kl, gaussian_log_density)
from della.models.bn_vae import PosteriorMeanBatchNorm

KL_LAYERS = {"all": slice(None), "first": slice(0, 1), "last": slice(-1, None)}  # groups with a posterior


@dataclass(frozen=True)
class DellaConfig:
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

    def __post_init__(self):
        choices = {"lmf_mode": ("paper", "lowrank"), "kl_aggregate": ("sum", "mean"),
                   "first_prior": ("standard", "learned"), "pool": POOLING_KINDS, "fusion": ("lmf", "add"),
                   "kl_layers": tuple(KL_LAYERS)}
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ValueError(f"model_args.{key} = {getattr(self, key)!r}; expected one of {allowed}")


def _linear(n_in: int, n_out: int, bias: bool = True) -> nn.Linear:
    layer = nn.Linear(n_in, n_out, bias=bias)
    nn.init.normal_(layer.weight, std=0.02)  # the code's HF init: N(0, 0.02^2), zero bias
    if bias:
        nn.init.zeros_(layer.bias)
    return layer


class LowRankFusion(nn.Module):
    """Eq. 9 with r factors T_j: Linear(d+1 -> d) on [V; 1] and Z_j: Linear(p+1 -> d) on [z; 1].

    `paper` multiplies the two sums, which collapses to one affine map per factor (reference
    §2.4): V' = (A V + a) * f(z). `lowrank` sums per-rank products (Liu et al. 2018), a genuinely
    rank-r fusion.
    """

    def __init__(self, d: int, p: int, rank: int, mode: str):
        super().__init__()
        self.mode = mode
        self.text_weight = nn.Parameter(torch.randn(rank, d, d + 1) * 0.02)
        self.text_bias = nn.Parameter(torch.zeros(rank, d))
        self.latent_weight = nn.Parameter(torch.randn(rank, d, p + 1) * 0.02)
        self.latent_bias = nn.Parameter(torch.zeros(rank, d))

    def latent_factor(self, z: torch.Tensor) -> torch.Tensor:
        """z (N, p) -> (N, d) for `paper`, (N, r, d) for `lowrank`."""
        w, b = self.latent_weight, self.latent_bias  # (r, d, p+1), (r, d)
        if self.mode == "paper":
            w, b = w.sum(0), b.sum(0)
            return z @ w[:, :-1].T + (w[:, -1] + b)
        return torch.einsum("np,rdp->nrd", z, w[..., :-1]) + (w[..., -1] + b)

    def _text_map(self) -> tuple[torch.Tensor, torch.Tensor]:
        """`paper`: the summed map (A (d, d), a (d,)) of V -> sum_j T_j [V; 1]."""
        w = self.text_weight.sum(0)
        return w[:, :-1], w[:, -1] + self.text_bias.sum(0)

    def forward(self, v: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
        """V (N, T, d) -> V' (N, T, d)."""
        if self.mode == "paper":
            A, a = self._text_map()
            return (v @ A.T + a) * factor[:, None, :]
        w, b = self.text_weight, self.text_bias  # (r, d, d+1), (r, d)
        r, d = b.shape
        text = v @ w[..., :-1].reshape(r * d, d).T + (w[..., -1] + b).reshape(r * d)  # (N, T, r*d)
        return (text.view(*v.shape[:2], r, d) * factor[:, None]).sum(2)

    def project(self, h: torch.Tensor, c_attn, factor: torch.Tensor, fold: bool | None = None):
        """The layer's Q, K, V' from its input h (N, T, d). In `paper` mode with more tokens than
        d, A is folded into the value columns of c_attn (one d^3 product per pass instead of
        N*T*d^2), so the fusion costs a single elementwise product per token."""
        N, T, d = h.shape
        if fold is None:
            fold = self.mode == "paper" and N * T > d
        if not fold:
            q, k, v = c_attn(h).split(d, dim=2)
            return q, k, self(v, factor)
        A, a = self._text_map()
        weight, bias = c_attn.weight, c_attn.bias  # Conv1D: y = x @ weight + bias, weight (d, 3d)
        weight = torch.cat([weight[:, : 2 * d], weight[:, 2 * d:] @ A.T], 1)
        bias = torch.cat([bias[: 2 * d], bias[2 * d:] @ A.T + a])
        q, k, v = torch.addmm(bias, h.reshape(N * T, d), weight).view(N, T, 3 * d).split(d, dim=2)
        return q, k, v * factor[:, None, :]


class AdditiveFusion(nn.Module):
    """−LTP (Table 4): the latent projected (W: p -> d, no bias) and added to the layer's values,
    V' = V + W z, in place of the low-rank tensor product."""

    def __init__(self, d: int, p: int):
        super().__init__()
        self.latent = _linear(p, d, bias=False)

    def latent_factor(self, z: torch.Tensor) -> torch.Tensor:
        return self.latent(z)

    def forward(self, v: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
        """V (N, T, d) -> V' = V + W z (N, T, d)."""
        return v + factor[:, None, :]

    def project(self, h: torch.Tensor, c_attn, factor: torch.Tensor):
        q, k, v = c_attn(h).split(h.shape[-1], dim=2)
        return q, k, self(v, factor)


@MODELS.register("della")
class Della(LatentModel):
    config_class = DellaConfig
    registry_name = "della"
    paper_name = "DELLA"  # the row label of the paper's tables

    def __init__(self, config: DellaConfig, backbone, vocab, conditional: bool = False):
        super().__init__(config, backbone, vocab, conditional)
        L, d, p = backbone.n_layer, backbone.n_embd, config.latent_size
        end = L - 1 if config.end_layer is None else config.end_layer
        if not 0 <= config.begin_layer <= end < L:
            raise ValueError(f"model_args: need 0 <= begin_layer ({config.begin_layer}) <= end_layer ({end}) < {L}")
        self.layers = list(range(config.begin_layer, end + 1))  # absolute indices of the fused layers
        # the encoder layers whose x^(l) infers a z: one per fused layer, or the top one under −LW
        self.latent_layers = self.layers[-1:] if config.shared_latent else self.layers
        self.n_groups, self.latent_size = len(self.latent_layers), p
        G = self.n_groups
        self.inferred = set(range(G)[KL_LAYERS[config.kl_layers]])  # groups whose z_l is inferred from x
        self.pool = nn.ModuleList(build_pooling(config.pool, d) for _ in range(G))
        self.recog_x = nn.ModuleList(_linear(d, 2 * p) for _ in range(G))  # W_q split as [W_qx | W_qh]:
        self.recog_h = nn.ModuleList(_linear(p, 2 * p, bias=False) for _ in range(G))  # same map, separable
        self.prior = nn.ModuleList(_linear(p, 2 * p) for _ in range(G))
        self.cell_ih = nn.ModuleList(_linear(p, p) for _ in range(G))
        self.cell_hh = nn.ModuleList(_linear(p, p) for _ in range(G))
        self.fusion = nn.ModuleList(LowRankFusion(d, p, config.lmf_rank, config.lmf_mode) if config.fusion == "lmf"
                                    else AdditiveFusion(d, p) for _ in self.layers)
        self.bow = _linear(p, d) if config.use_bow else None
        self.bn = (None if config.bn_gamma is None
                   else nn.ModuleList(PosteriorMeanBatchNorm(p, config.bn_gamma) for _ in range(G)))
        if conditional:
            self.condition_pool = nn.ModuleList(build_pooling(config.pool, d) for _ in range(G))
            self.prior_condition = nn.ModuleList(_linear(d, 2 * p, bias=False) for _ in range(G))

    # --- encoder side ----------------------------------------------------------------------------
    def encode(self, input_ids, mask, condition=None):
        self.check_condition(condition)
        x = self._pooled_layers(self.pool, input_ids, mask)
        return x if condition is None else torch.cat([x, self.encode_condition(condition)], -1)

    def encode_condition(self, condition: Condition) -> torch.Tensor:
        """c_l (B, G, d): the source's encoder pass, pooled per latent layer."""
        return self._pooled_layers(self.condition_pool, condition.ids, condition.mask)

    def _pooled_layers(self, pools, input_ids, mask) -> torch.Tensor:
        out = self.backbone(input_ids, mask, causal=False, return_layers=True, final_norm=False)
        pool_mask = mask if self.config.pool_mask else None
        return torch.stack([pool(out.layers[l], pool_mask) for pool, l in zip(pools, self.latent_layers)], 1)

    def _is_root(self, g: int) -> bool:
        """Whether group g starts a chain: the first one, or every one without the recurrence."""
        return g == 0 or not self.config.recurrence

    def _summary(self, g: int, h: torch.Tensor, z_prev: torch.Tensor) -> torch.Tensor:
        """h_g from h_{g-1} and z_{g-1}. A root's summary sees neither: 0 under the standard prior,
        the cell run on zeros under the learned one."""
        if self._is_root(g):
            if self.config.first_prior == "standard":
                return torch.zeros_like(h)
            h, z_prev = torch.zeros_like(h), torch.zeros_like(z_prev)
        return torch.tanh(self.cell_hh[g](h) + self.cell_ih[g](z_prev))

    def _split(self, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.config.clamp is not None:
            params = params.clamp(-self.config.clamp, self.config.clamp)
        mean, logvar = params.chunk(2, dim=-1)
        return mean, logvar

    def _posterior_params(self, g: int, params: torch.Tensor, h: torch.Tensor,
                          c: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Group g's posterior mean and log-variance from its [mu; log s2] (..., 2p) and the path's
        summary h (broadcastable to it); a group outside kl_layers has the prior's, q = p(z_g | z_<g)."""
        if g not in self.inferred:
            mean, logvar = self._prior_params(g, h, c)
            shape = (*params.shape[:-1], self.latent_size)
            return mean.expand(shape), logvar.expand(shape)
        mean, logvar = self._split(params)
        if self.bn is not None:
            mean = self.bn[g](mean)
        return mean, logvar

    def _prior_params(self, g: int, h: torch.Tensor, c: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """p(z_g | z_<g [, c_g]); c (..., G, d) broadcastable to h, or None (unconditional)."""
        standard_root = self._is_root(g) and self.config.first_prior == "standard"
        if c is None:
            if standard_root:
                return torch.zeros_like(h), torch.zeros_like(h)
            return self._split(self.prior[g](h))
        params = self.prior_condition[g](c[..., g, :])
        return self._split(params if standard_root else self.prior[g](h) + params)

    def sample_posterior(self, features, k):
        x, c = self.split_features(features)
        B, G, _ = x.shape
        from_x = torch.stack([self.recog_x[g](x[:, g]) for g in range(G)], 1)  # (B, G, 2p)
        from_x = from_x.repeat(k, 1, 1)  # (K*B, G, 2p), sample-major
        c = None if c is None else c.repeat(k, 1, 1)
        h = z = x.new_zeros((k * B, self.latent_size))
        out = {key: [] for key in ("z", "log_q", "log_p", "kl", "mean", "logvar")}
        for g in range(G):
            h = self._summary(g, h, z)
            qm, ql = self._posterior_params(g, from_x[:, g] + self.recog_h[g](h), h, c)
            pm, pl = self._prior_params(g, h, c)
            z = qm + torch.exp(0.5 * ql) * torch.randn_like(qm)
            for key, value in (("z", z), ("mean", qm), ("logvar", ql), ("kl", gaussian_kl(qm, ql, pm, pl)),
                               ("log_q", gaussian_log_density(z, qm, ql)),
                               ("log_p", gaussian_log_density(z, pm, pl))):
                out[key].append(value)
        return Posterior(**{key: torch.stack(v, 1).view(k, B, G, *v[0].shape[1:]) for key, v in out.items()})

    def _summaries(self, z: torch.Tensor) -> torch.Tensor:
        """h_g for every group along given paths z (M, G, p) -> (M, G, p)."""
        h, hs = torch.zeros_like(z[:, 0]), []
        for g in range(self.n_groups):
            h = self._summary(g, h, z[:, g - 1] if g else torch.zeros_like(h))
            hs.append(h)
        return torch.stack(hs, 1)

    def log_q_matrix(self, z, features, chunk: int = 64):
        features, c = self.split_features(features)
        from_x = torch.stack([self.recog_x[g](features[:, g]) for g in range(self.n_groups)], 1)  # (N, G, 2p)
        hs = self._summaries(z)
        from_h = torch.stack([self.recog_h[g](hs[:, g]) for g in range(self.n_groups)], 1)  # (M, G, 2p)
        rows = []
        for i in range(0, z.shape[0], chunk):  # (m, N, G, 2p) at a time keeps memory bounded
            params = from_h[i:i + chunk, None] + from_x[None]
            mean, logvar = zip(*(self._posterior_params(g, params[..., g, :], hs[i:i + chunk, None, g], c)
                                 for g in range(self.n_groups)))
            mean, logvar = torch.stack(mean, -2), torch.stack(logvar, -2)
            rows.append(gaussian_log_density(z[i:i + chunk, None], mean, logvar).sum(-1))
        return torch.cat(rows)

    def sample_prior(self, n, generator=None, condition=None):
        """Ancestral sampling, layer by layer: z_l ~ p(z_l | z_<l [, c_l])."""
        self.check_condition(condition)
        c = None if condition is None else self.encode_condition(condition)
        p = self.latent_size
        h = z = torch.zeros(n, p, device=self.device)
        zs = []
        for g in range(self.n_groups):
            h = self._summary(g, h, z)
            mean, logvar = self._prior_params(g, h, c)
            eps = torch.randn(n, p, generator=generator, device=self.device)
            z = mean + torch.exp(0.5 * logvar) * eps
            zs.append(z)
        return torch.stack(zs, 1)

    # --- decoder side ----------------------------------------------------------------------------
    def injection(self, z):
        hooks = {}
        for i, (layer, fusion) in enumerate(zip(self.layers, self.fusion)):
            g = 0 if self.config.shared_latent else i
            hooks[layer] = functools.partial(fusion.project, factor=fusion.latent_factor(z[:, g]))
        return Injection(qkv=hooks)

    def aggregate_kl(self, kl):
        if self.config.kl_threshold > 0:
            kl = kl.clamp(min=self.config.kl_threshold)
        return kl.sum(-1) if self.config.kl_aggregate == "sum" else kl.mean(-1)
