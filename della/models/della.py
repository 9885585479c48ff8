"""DELLA (Hu et al., NAACL 2022): layer-wise latent variables fused into attention values.

Encoder and decoder are the same GPT-2 (reference §2.1): the encoder pass is bidirectional with
a padding mask, the decoder pass causal. For each latent layer l = b..e:

  h_l = tanh(W_hh h_{l-1} + W_ih z_{l-1})                  summary of z_<l       (Eq. 7)
  [mu_p; log s2_p] = W_p h_l                                prior p(z_l | z_<l)   (Eq. 8)
  [mu_q; log s2_q] = W_q [x^(l); h_l]                       posterior q(z_l | x, z_<l)
  V'_l = (sum_j W_v^(l,j) [V_l; 1]) * (sum_j W_z^(l,j) [z_l; 1])                   (Eq. 9)

where x^(l) is the state of the first token (<s>) at the output of encoder block l (the paper, §4
and App. A.1; the official code pools all positions by attention: `pool: attention`). The
defaults follow the paper's text: KL summed over layers (a true ELBO), p(z_b) = N(0, I), the first
token's state, no clamps; the tied LM head is our choice where it is silent (the paper's parameter
count is the official code's, untied). Each departure of the official code (reference §10) is a
switch (`DellaConfig`, della/models/configs.py), and the `della-official` preset in
config/config.yaml turns them all on.

The ablations of the paper's Table 4 and the BN-VAE trick of its Table 5 are switches too, off by
default: `fusion: add` (−LTP), `shared_latent` (−LW), `recurrence: false` (Separate), `kl_layers`
(KL only at l = 1 or l = L) and `bn_gamma` (BN-VAE). With `kl_layers: first` (or `last`) only that
layer infers z_l from x; every other layer draws z_l from its conditional prior p(z_l | z_<l), in
training and evaluation alike (q = p, so its KL term is 0): the recurrence stays and one KL term is
optimised, and the ELBO, KL, MI and AU stay those of the whole model, as in the paper's Table 4.

As a CVAE (reference §5, the official code): the condition is pooled per latent layer by an extra
encoder pass over the source, c_l (the same encoder and pooling as x^(l): `pool: attention`'s w_l
are shared), and the prior of layer l takes [h_l; c_l], written here as
W_p h_l + W_c c_l with W_c a Linear without bias (so W_c = 0 gives the unconditional prior, and
the first layer's standard prior becomes N(W_c c_b)). The posterior is unchanged: x^(l) is pooled
over source + target, so the condition reaches it through the encoder's input.

The per-layer weights are stacked over the layers (GroupedLinear, LowRankFusion), so a pass runs the
heads that do not wait on the recurrence, the latent factors and the text maps of all layers in one
batched op each. A small model's GPU step is bound by kernel launches, not arithmetic (issue 11);
this cuts the ops of DELLA's step by a quarter to a third (`benchmarks/train_speed.py` counts them).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from della.models.backbone import Injection
from della.models.base import (Condition, LatentModel, Posterior, build_pooling, gaussian_kl, gaussian_log_density,
                               standard_normal)
from della.models.bn_vae import PosteriorMeanBatchNorm
from della.models.configs import DellaConfig

KL_LAYERS = {"all": slice(None), "first": slice(0, 1), "last": slice(-1, None)}  # groups with a posterior
# a key of the layout before the per-layer weights were stacked: `recog_x.{g}.weight`, `fusion.{i}.text_weight`
PER_GROUP_KEY = re.compile(r"(recog_x|recog_h|prior|cell_ih|cell_hh|prior_condition|fusion)\.(\d+)\.(.+)")


def _linear(n_in: int, n_out: int, bias: bool = True) -> nn.Linear:
    layer = nn.Linear(n_in, n_out, bias=bias)
    nn.init.normal_(layer.weight, std=0.02)  # the code's HF init: N(0, 0.02^2), zero bias
    if bias:
        nn.init.zeros_(layer.bias)
    return layer


class LinearMap(NamedTuple):
    """One group's affine map x -> x W^T + b, as views into a GroupedLinear's weights."""
    weight: torch.Tensor  # (n_out, n_in)
    bias: torch.Tensor | None  # (n_out,)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


class GroupedLinear(nn.Module):
    """G separate maps Linear(n_in -> n_out), one per latent group (or fused layer), held as one
    weight (G, n_out, n_in): `forward` applies each to its own group in one batched matmul, and
    `unbind` hands a sequential loop the G maps at the cost of one backward op for all of them
    (indexing would cost one per group). A GPU step is bound by kernel launches, not arithmetic
    (issue 11), so G launches become one. Initialised as G separate `_linear`s drawn in turn."""

    def __init__(self, groups: int, n_in: int, n_out: int, bias: bool = True):
        super().__init__()
        maps = [_linear(n_in, n_out, bias) for _ in range(groups)]
        self.weight = nn.Parameter(torch.stack([m.weight.detach() for m in maps]))
        self.bias = nn.Parameter(torch.stack([m.bias.detach() for m in maps])) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, G, n_in) -> (N, G, n_out): group g's map on x[:, g]."""
        weight = self.weight.transpose(1, 2)
        if self.bias is None:
            return torch.bmm(x.transpose(0, 1), weight).transpose(0, 1)
        return torch.baddbmm(self.bias[:, None], x.transpose(0, 1), weight).transpose(0, 1)

    def unbind(self) -> list[LinearMap]:
        return self.maps(self.weight, self.bias)

    @staticmethod
    def maps(weight: torch.Tensor, bias: torch.Tensor | None) -> list[LinearMap]:
        """Stacked weights (G, n_out, n_in) and biases (G, n_out) -> the G maps, as views."""
        biases = [None] * len(weight) if bias is None else bias.unbind(0)
        return [LinearMap(w, b) for w, b in zip(weight.unbind(0), biases)]

    def __getitem__(self, g: int) -> LinearMap:
        return LinearMap(self.weight[g], None if self.bias is None else self.bias[g])

    def __len__(self) -> int:
        return self.weight.shape[0]


class LowRankFusion(nn.Module):
    """Eq. 9 at each of n fused layers: per layer i and factor j, T_ij: Linear(d+1 -> d) on [V; 1]
    and Z_ij: Linear(p+1 -> d) on [z; 1], stacked over layers and factors, so a pass computes the
    latent factors of every layer (and in `paper` mode their text maps) in one batched op.

    `paper` multiplies the two sums, which collapses to one affine map per factor (reference
    §2.4): V' = (A V + a) * f(z). `lowrank` sums per-rank products (Liu et al. 2018), a genuinely
    rank-r fusion.
    """

    def __init__(self, n: int, d: int, p: int, rank: int, mode: str):
        super().__init__()
        self.mode, self.d, self.p = mode, d, p
        drawn = [(torch.randn(rank, d, d + 1) * 0.02, torch.randn(rank, d, p + 1) * 0.02) for _ in range(n)]
        self.text_weight = nn.Parameter(torch.stack([text for text, _ in drawn]))  # (n, r, d, d+1)
        self.text_bias = nn.Parameter(torch.zeros(n, rank, d))
        self.latent_weight = nn.Parameter(torch.stack([latent for _, latent in drawn]))  # (n, r, d, p+1)
        self.latent_bias = nn.Parameter(torch.zeros(n, rank, d))

    def latent_factors(self, z: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """z (N, n, p), layer i's latent in column i -> per layer (N, d) in `paper`, (N, r, d) in `lowrank`."""
        w, b = self.latent_weight, self.latent_bias
        if self.mode == "paper":
            w, b = w.sum(1), b.sum(1)  # (n, d, p+1), (n, d)
            w_z, w_1 = w.split([self.p, 1], -1)
            return (torch.bmm(z.transpose(0, 1), w_z.transpose(1, 2)) + (w_1[..., 0] + b)[:, None]).unbind(0)
        w_z, w_1 = w.split([self.p, 1], -1)
        return (torch.einsum("nip,irdp->inrd", z, w_z) + (w_1[..., 0] + b)[:, None]).unbind(0)

    def text_maps(self) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
        """`paper`: every layer's summed map V -> sum_j T_ij [V; 1] = A_i V + a_i, as per-layer
        tuples of A_i (d, d) and a_i (d,), computed in one op for all layers."""
        A, w_1 = self.text_weight.sum(1).split([self.d, 1], -1)
        return A.unbind(0), (w_1[..., 0] + self.text_bias.sum(1)).unbind(0)

    def values(self, i: int, v: torch.Tensor, factor: torch.Tensor, maps) -> torch.Tensor:
        """Layer i: V (N, T, d) -> V' (N, T, d); `maps()` gives text_maps(), computed once a pass."""
        if self.mode == "paper":
            A, a = maps()
            return (v @ A[i].T + a[i]) * factor[:, None, :]
        w, b = self.text_weight[i], self.text_bias[i]  # (r, d, d+1), (r, d)
        r, d = b.shape
        text = v @ w[..., :-1].reshape(r * d, d).T + (w[..., -1] + b).reshape(r * d)  # (N, T, r*d)
        return (text.view(*v.shape[:2], r, d) * factor[:, None]).sum(2)

    def folded(self, projections: list, maps) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """`paper`: each layer's QKV projection (a GPT-2 Conv1D: y = x W + b, W (d, 3d)) with A_i, a_i
        folded into its value columns, one batched d^3 product for all layers: [(W', b')] per layer."""
        d = self.d
        A, a = maps()
        A_t = torch.stack(A).transpose(1, 2)  # (n, d, d)
        w_qk, w_v = torch.stack([c.weight for c in projections]).split([2 * d, d], -1)  # (n, d, 2d), (n, d, d)
        b_qk, b_v = torch.stack([c.bias for c in projections]).split([2 * d, d], -1)
        weights = torch.cat([w_qk, torch.bmm(w_v, A_t)], -1)
        biases = torch.cat([b_qk, torch.bmm(b_v[:, None], A_t)[:, 0] + torch.stack(a)], -1)
        return list(zip(weights.unbind(0), biases.unbind(0)))

    def project(self, i: int, h: torch.Tensor, c_attn, factor: torch.Tensor, maps, folded):
        """Layer i's Q, K, V' from its input h (N, T, d). In `paper` mode with more tokens than d,
        the projection is the folded one (one d^3 product a pass instead of N*T*d^2), so the fusion
        costs a single elementwise product per token; `folded()` is computed once a pass."""
        N, T, d = h.shape
        if self.mode != "paper" or N * T <= d:
            q, k, v = c_attn(h).split(d, dim=2)
            return q, k, self.values(i, v, factor, maps)
        weight, bias = folded()[i]
        q, k, v = torch.addmm(bias, h.reshape(N * T, d), weight).view(N, T, 3 * d).split(d, dim=2)
        return q, k, v * factor[:, None, :]


class AdditiveFusion(nn.Module):
    """−LTP (Table 4): layer i's latent projected (W_i: p -> d, no bias) and added to its values,
    V' = V + W_i z_i, in place of the low-rank tensor product."""

    def __init__(self, n: int, d: int, p: int):
        super().__init__()
        self.latent = GroupedLinear(n, p, d, bias=False)

    def latent_factors(self, z: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """z (N, n, p) -> per layer W_i z_i (N, d)."""
        return self.latent(z).unbind(1)

    def text_maps(self) -> None:
        """The values enter unmapped."""
        return None

    def values(self, i: int, v: torch.Tensor, factor: torch.Tensor, maps=None) -> torch.Tensor:
        """V (N, T, d) -> V' = V + W_i z_i (N, T, d)."""
        return v + factor[:, None, :]

    def project(self, i: int, h: torch.Tensor, c_attn, factor: torch.Tensor, maps=None, folded=None):
        q, k, v = c_attn(h).split(h.shape[-1], dim=2)
        return q, k, self.values(i, v, factor)


def once(compute):
    """A function returning compute()'s result, computed at its first call: what a decoder pass's
    layers share. A dict, not functools.cache: torch.compile traces through a cache wrapper (so each
    layer would recompute it), but keeps a dict's contents."""
    memo = {}

    def value():
        if not memo:
            memo["value"] = compute()
        return memo["value"]
    return value


def stack_per_group_keys(state: dict, prefix: str, *_) -> None:
    """A state_dict saved before the per-layer weights were stacked holds them per group or layer
    (`recog_x.0.weight`, `fusion.1.text_weight`): stacked here (`recog_x.weight`, `fusion.text_weight`)
    so its checkpoints still load."""
    stacks: dict[str, dict[int, torch.Tensor]] = {}
    for key in [k for k in state if k.startswith(prefix)]:
        if match := PER_GROUP_KEY.fullmatch(key[len(prefix):]):
            name, index, param = match.groups()
            stacks.setdefault(f"{prefix}{name}.{param}", {})[int(index)] = state.pop(key)
    for key, tensors in stacks.items():
        state[key] = torch.stack([tensors[i] for i in sorted(tensors)])


@dataclass
class Chain:
    """One pass's view of the latent chain's maps: per group, the cell (on [h; z]), posterior and
    prior heads (views into their GroupedLinear), and for a CVAE the condition's prior terms W_c c_g
    of every group, (..., G, 2p)."""
    cell: list[LinearMap]
    recog_h: list[LinearMap]
    prior: list[LinearMap]
    condition: torch.Tensor | None


class Della(LatentModel):
    registry_name = "della"

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
        standard_roots = [config.first_prior == "standard" and self._is_root(g) for g in range(G)]
        self.has_standard_root = any(standard_roots)
        # 0 where the prior is the standard N(0, I): a mask, so the prior heads of all groups run in one op
        self.register_buffer("learned_prior", 1.0 - torch.tensor(standard_roots, dtype=torch.float)[:, None],
                             persistent=False)
        self.pool = nn.ModuleList(build_pooling(config.pool, d) for _ in range(G))
        self.recog_x = GroupedLinear(G, d, 2 * p)  # W_q split as [W_qx | W_qh]:
        self.recog_h = GroupedLinear(G, p, 2 * p, bias=False)  # the same map, separable
        self.prior = GroupedLinear(G, p, 2 * p)
        self.cell_ih = GroupedLinear(G, p, p)
        self.cell_hh = GroupedLinear(G, p, p)
        n = len(self.layers)
        self.fusion = (LowRankFusion(n, d, p, config.lmf_rank, config.lmf_mode) if config.fusion == "lmf"
                       else AdditiveFusion(n, d, p))
        self.bow = _linear(p, d) if config.use_bow else None
        self.bn = (None if config.bn_gamma is None
                   else nn.ModuleList(PosteriorMeanBatchNorm(p, config.bn_gamma) for _ in range(G)))
        if conditional:
            self.prior_condition = GroupedLinear(G, d, 2 * p, bias=False)
        self._register_load_state_dict_pre_hook(stack_per_group_keys)

    # --- encoder side ----------------------------------------------------------------------------
    def encode(self, input_ids, mask, condition=None):
        self.check_condition(condition)
        x = self._pooled_layers(self.pool, input_ids, mask)
        return x if condition is None else torch.cat([x, self.encode_condition(condition)], -1)

    def encode_condition(self, condition: Condition) -> torch.Tensor:
        """c_l (B, G, d): the source's encoder pass, pooled per latent layer by x^(l)'s own pooling (the
        official code runs its whole encoder, pooling weights included, over the source)."""
        return self._pooled_layers(self.pool, condition.ids, condition.mask)

    def _pooled_layers(self, pools, input_ids, mask) -> torch.Tensor:
        out = self.backbone(input_ids, mask, causal=False, return_layers=True, final_norm=False)
        pool_mask = mask if self.config.pool_mask else None
        return torch.stack([pool(out.layers[l], pool_mask) for pool, l in zip(pools, self.latent_layers)], 1)

    def _chain(self, c: torch.Tensor | None) -> Chain:
        """The chain's per-group maps for one pass, and the condition's prior terms W_c c_g. The cell
        W_hh h + b_hh + W_ih z + b_ih is one map of [h; z]."""
        cell = GroupedLinear.maps(torch.cat([self.cell_hh.weight, self.cell_ih.weight], -1),
                                  self.cell_hh.bias + self.cell_ih.bias)
        terms = None if c is None else self.prior_condition(c)
        return Chain(cell, self.recog_h.unbind(), self.prior.unbind(), terms)

    def _is_root(self, g: int) -> bool:
        """Whether group g starts a chain: the first one, or every one without the recurrence."""
        return g == 0 or not self.config.recurrence

    def _summary(self, g: int, h: torch.Tensor, z_prev: torch.Tensor, chain: Chain) -> torch.Tensor:
        """h_g from h_{g-1} and z_{g-1}. A root's summary sees neither: 0 under the standard prior,
        the cell run on zeros under the learned one."""
        if self._is_root(g):
            if self.config.first_prior == "standard":
                return torch.zeros_like(h)
            h, z_prev = torch.zeros_like(h), torch.zeros_like(z_prev)
        return torch.tanh(chain.cell[g](torch.cat([h, z_prev], -1)))

    def _split(self, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.config.clamp is not None:
            params = params.clamp(-self.config.clamp, self.config.clamp)
        mean, logvar = params.chunk(2, dim=-1)
        return mean, logvar

    def _posterior_params(self, g: int, params: torch.Tensor, h: torch.Tensor,
                          chain: Chain) -> tuple[torch.Tensor, torch.Tensor]:
        """Group g's posterior mean and log-variance from its [mu; log s2] (..., 2p) and the path's
        summary h (broadcastable to it); a group outside kl_layers has the prior's, q = p(z_g | z_<g)."""
        if g not in self.inferred:
            mean, logvar = self._prior_params(h, chain, g)
            shape = (*params.shape[:-1], self.latent_size)
            return mean.expand(shape), logvar.expand(shape)
        mean, logvar = self._split(params)
        if self.bn is not None:
            mean = self.bn[g](mean)
        return mean, logvar

    def _prior_params(self, h: torch.Tensor, chain: Chain, g: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """p(z_g | z_<g [, c_g]) from the summary h: of group g (..., p), or of every group at once
        (..., G, p). A root under the standard prior has W_p h + b_p masked to 0 (`learned_prior`):
        N(0, I), or N(W_c c_g, I) for a CVAE."""
        if g is None:
            params, learned, term = self.prior(h), self.learned_prior, chain.condition
        else:
            params, learned = chain.prior[g](h), self.learned_prior[g]
            term = None if chain.condition is None else chain.condition[..., g, :]
        if self.has_standard_root:
            params = params * learned
        return self._split(params if term is None else params + term)

    def sample_posterior(self, features, k):
        x, c = self.split_features(features)
        B, G, _ = x.shape
        chain = self._chain(None if c is None else c.repeat(k, 1, 1))
        from_x = self.recog_x(x).repeat(k, 1, 1).unbind(1)  # G x (K*B, 2p), sample-major
        # every group's noise in one draw (one launch, not G), group-major; z in fp32 under bf16
        # autocast: z rounded to bf16 would not be a draw from the q its density is taken under
        noise = torch.randn((G, k * B, self.latent_size), device=x.device).unbind(0)
        h = z = x.new_zeros((k * B, self.latent_size))
        path = {key: [] for key in ("h", "z", "mean", "logvar")}
        for g in range(G):  # only the draws are sequential; the prior and the densities are batched, below
            h = self._summary(g, h, z, chain)
            qm, ql = self._posterior_params(g, torch.addmm(from_x[g], h, chain.recog_h[g].weight.T), h, chain)
            qm, ql = qm.float(), ql.float()
            z = qm + torch.exp(0.5 * ql) * noise[g]
            for key, value in zip(path, (h, z, qm, ql)):
                path[key].append(value)
        h, z, qm, ql = (torch.stack(v, 1) for v in path.values())  # (K*B, G, p)
        pm, pl = self._prior_params(h, chain)
        posterior = {"z": z, "mean": qm, "logvar": ql, "kl": gaussian_kl(qm, ql, pm, pl),
                     "log_q": gaussian_log_density(z, qm, ql), "log_p": gaussian_log_density(z, pm, pl)}
        return Posterior(**{key: v.view(k, B, *v.shape[1:]) for key, v in posterior.items()})

    def prior_along(self, z: torch.Tensor, c: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """p(z_g | z_<g [, c_g]) for every group along given paths z (M, G, p), c (M, G, d) for a
        CVAE: mean and log-variance (M, G, p)."""
        chain = self._chain(c)
        return self._prior_params(self._summaries(z, chain), chain)

    def _summaries(self, z: torch.Tensor, chain: Chain) -> torch.Tensor:
        """h_g for every group along given paths z (M, G, p) -> (M, G, p)."""
        z_prev = z.unbind(1)
        h, hs = torch.zeros_like(z_prev[0]), []
        for g in range(self.n_groups):
            h = self._summary(g, h, z_prev[g - 1] if g else torch.zeros_like(h), chain)
            hs.append(h)
        return torch.stack(hs, 1)

    def log_q_matrix(self, z, features, chunk: int = 64):
        features, c = self.split_features(features)
        chain = self._chain(c)
        from_x = self.recog_x(features)  # (N, G, 2p)
        hs = self._summaries(z, chain)
        from_h = self.recog_h(hs)  # (M, G, 2p)
        rows = []
        for i in range(0, z.shape[0], chunk):  # (m, N, G, 2p) at a time keeps memory bounded
            params = from_h[i:i + chunk, None] + from_x[None]
            mean, logvar = zip(*(self._posterior_params(g, params[..., g, :], hs[i:i + chunk, None, g], chain)
                                 for g in range(self.n_groups)))
            mean, logvar = torch.stack(mean, -2), torch.stack(logvar, -2)
            rows.append(gaussian_log_density(z[i:i + chunk, None], mean, logvar).sum(-1))
        return torch.cat(rows)

    def sample_prior(self, n, generator=None, condition=None):
        """Ancestral sampling, layer by layer: z_l ~ p(z_l | z_<l [, c_l])."""
        self.check_condition(condition)
        chain = self._chain(None if condition is None else self.encode_condition(condition))
        p = self.latent_size
        h = z = torch.zeros(n, p, device=self.device)
        zs = []
        for g in range(self.n_groups):
            h = self._summary(g, h, z, chain)
            mean, logvar = self._prior_params(h, chain, g)
            eps = standard_normal((n, p), generator, self.device)
            z = mean + torch.exp(0.5 * logvar) * eps
            zs.append(z)
        return torch.stack(zs, 1)

    # --- decoder side ----------------------------------------------------------------------------
    def layer_factors(self, z: torch.Tensor):
        """Each fused layer's latent factor (one batched op for all) and, computed once a pass on
        first use, the fusion's text maps."""
        if self.config.shared_latent:
            z = z.expand(-1, len(self.layers), -1)
        return self.fusion.latent_factors(z), once(self.fusion.text_maps)

    def injection(self, z):
        factors, maps = self.layer_factors(z)
        projections = [self.backbone.gpt2.h[layer].attn.c_attn for layer in self.layers]
        folded = once(lambda: self.fusion.folded(projections, maps))
        return Injection(qkv={layer: functools.partial(self.fusion.project, i, factor=factors[i], maps=maps,
                                                       folded=folded)
                              for i, layer in enumerate(self.layers)})

    def aggregate_kl(self, kl):
        if self.config.kl_threshold > 0:
            kl = kl.clamp(min=self.config.kl_threshold)
        return kl.sum(-1) if self.config.kl_aggregate == "sum" else kl.mean(-1)
