"""The representation metrics, written once for every model (reference §8, metrics.md §9).

All sums run over latent groups, so DELLA's hierarchical log p(z) = sum_l log p(z_l | z_<l) and
log q(z | x) = sum_l log q(z_l | x, z_<l) enter exactly; the official code's layer-averaged
variant is computed beside it, under its own name, for comparison only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from della.models import LatentModel, Posterior


@dataclass
class BatchEstimates:
    log_marginal: torch.Tensor  # (B,) IW estimate of log p(x), sums over groups
    log_marginal_layer_mean: torch.Tensor  # (B,) the official code's estimator (layer means)
    rec_nll: torch.Tensor  # (B,) E_q[-log p(x|z)] over the K samples
    kl: torch.Tensor  # (B, G) analytic KL per group, averaged over the K sampled paths
    features: torch.Tensor  # (B, G, d) encoder features
    posterior: Posterior  # the K samples (the first is used for MI and AU)


def reconstruction_nll(model: LatentModel, ids: torch.Tensor, mask: torch.Tensor, z: torch.Tensor,
                       max_rows: int) -> torch.Tensor:
    """-log p(x | z_k) for K latent samples z (K, B, G, p) -> (K, B); the K decoder passes run
    batched, max_rows sequences at a time."""
    K, B = z.shape[:2]
    if model.n_groups == 0:  # no latent: one pass serves every sample
        return model.token_nll(ids, mask, z[0]).expand(K, B)
    per_chunk = max(1, max_rows // B)
    out = []
    for k0 in range(0, K, per_chunk):
        zk = z[k0: k0 + per_chunk]
        n = zk.shape[0]
        nll = model.token_nll(ids.repeat(n, 1), mask.repeat(n, 1), zk.reshape(n * B, *z.shape[2:]))
        out.append(nll.view(n, B))
    return torch.cat(out)


def iw_batch(model: LatentModel, ids: torch.Tensor, mask: torch.Tensor, k: int,
             max_rows: int = 128) -> BatchEstimates:
    """log p(x) ≈ logsumexp_k [log p(x|z_k) + log p(z_k) - log q(z_k|x)] - log K, z_k ~ q(z|x).
    The encoder runs once per sentence; only the tiny latent heads run per sample."""
    features = model.encode(ids, mask)
    post = model.sample_posterior(features, k)
    nll = reconstruction_nll(model, ids, mask, post.z, max_rows)  # (K, B)
    log_k = math.log(k)
    log_w = -nll + post.log_p.sum(-1) - post.log_q.sum(-1)
    G = max(model.n_groups, 1)
    log_w_mean = -nll + (post.log_p.sum(-1) - post.log_q.sum(-1)) / G
    return BatchEstimates(log_marginal=torch.logsumexp(log_w, 0) - log_k,
                          log_marginal_layer_mean=torch.logsumexp(log_w_mean, 0) - log_k,
                          rec_nll=nll.mean(0), kl=post.kl.mean(0), features=features, posterior=post)


def gaussian_neg_entropy(logvar: torch.Tensor) -> torch.Tensor:
    """E_q[log q(z)] of diagonal Gaussians: -D/2 log 2π - 1/2 Σ_d (1 + log σ²_d), over the last axis."""
    return -0.5 * (math.log(2 * math.pi) + 1 + logvar).sum(-1)


def mutual_information(model: LatentModel, features: torch.Tensor, z: torch.Tensor, logvar: torch.Tensor,
                       group_size: int | None = None) -> float:
    """He et al. (2019): I(x; z) ≈ mean_i E_q log q(z|x_i) - mean_i log q̂(z_i), with
    q̂(z_i) = (1/M) Σ_j q(z_i | x_j) over M examples (M = N when group_size is None).

    features (N, G, d): encoder features; z (N, G, p): one posterior path per example;
    logvar (N, G, p): the posterior log-variances on that path. For DELLA the entropy term is
    the closed form of each layer given the sampled path below it (Rao-Blackwellised), and
    log q(z_i | x_j) re-runs only the latent heads along z_i's own path (reference §8.3(b)).
    """
    N = z.shape[0]
    M = group_size or N
    neg_entropy = gaussian_neg_entropy(logvar).sum(-1)  # (N,)
    log_agg = []
    for start in range(0, N, M):
        sl = slice(start, start + M)
        log_q = model.log_q_matrix(z[sl], features[sl])  # (m, m)
        log_agg.append(torch.logsumexp(log_q, 1) - math.log(log_q.shape[1]))
    return (neg_entropy.mean() - torch.cat(log_agg).mean()).item()


def active_units(means: torch.Tensor, delta: float) -> torch.Tensor:
    """Per dimension: Var_x(E_q[z_d | x]) >= delta (unbiased variance, as the DELLA code).
    means (N, G, p) -> bool (G, p)."""
    return means.var(dim=0, unbiased=True) >= delta
