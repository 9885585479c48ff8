"""The representation metrics, written once for every model (reference §8, metrics.md §9).

All sums run over latent groups, so DELLA's hierarchical log p(z) = sum_l log p(z_l | z_<l) and
log q(z | x) = sum_l log q(z_l | x, z_<l) enter exactly; the official code's layer-averaged
variant is computed beside it, under its own name, for comparison only. An estimator given fewer
examples than it needs (MIN_EXAMPLES) raises TooFewExamples rather than return a number.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from della.models.base import Condition, LatentModel, Posterior


@dataclass
class BatchEstimates:
    log_marginal: torch.Tensor  # (B,) IW estimate of log p(x), sums over groups
    log_marginal_layer_mean: torch.Tensor  # (B,) the official code's estimator (layer means)
    rec_nll: torch.Tensor  # (B,) E_q[-log p(x|z)] over the K samples
    kl: torch.Tensor  # (B, G) analytic KL per group, averaged over the K sampled paths
    features: torch.Tensor  # (B, G, d) encoder features ([x; c], (B, G, 2d), for a CVAE)
    posterior: Posterior  # the K samples (the first path is used for MI, all K for AU)


def reconstruction_nll(model: LatentModel, ids: torch.Tensor, mask: torch.Tensor, z: torch.Tensor,
                       max_rows: int, condition: Condition | None = None) -> torch.Tensor:
    """-log p(x | z_k [, c]) for K latent samples z (K, B, G, p) -> (K, B); the K decoder passes
    run batched, max_rows sequences at a time."""
    K, B = z.shape[:2]
    if model.n_groups == 0:  # no latent: one pass serves every sample
        return model.token_nll(ids, mask, z[0], condition).expand(K, B)
    per_chunk = max(1, max_rows // B)
    out = []
    for k0 in range(0, K, per_chunk):
        zk = z[k0: k0 + per_chunk]
        n = zk.shape[0]
        nll = model.token_nll(ids.repeat(n, 1), mask.repeat(n, 1), zk.reshape(n * B, *z.shape[2:]),
                              None if condition is None else condition.repeat(n))
        out.append(nll.view(n, B))
    return torch.cat(out)


CPU_IW_ROWS = 128  # sequences per IW decoder pass on the CPU: larger passes are no faster per sequence


def iw_row_bytes(seq: int, vocab: int, width: int) -> int:
    """Memory one sequence of `seq` tokens takes in an IW decoder pass (no gradients): its logits,
    their contiguous copy and their log-softmax, fp32 (12 T V bytes; 12.4 measured on the CPU at
    V = 8000, T = 32), a third more for the allocator's rounding, and its activations (64 T d)."""
    return 16 * seq * vocab + 64 * seq * width


def iw_rows(setting: int | str, device: torch.device | str, seq: int, vocab: int, width: int) -> int:
    """evaluate.iw_rows -> the sequences one decoder pass takes (the K samples x the batch are decoded
    in passes of this many). auto: 128 on the CPU; on CUDA as many as half the free memory holds at
    iw_row_bytes each, so that K = 30 samples of a batch of 32 (960 sequences) go in one pass where
    they fit: about 1360 fit in an H200's 139 GiB at GPT-2 small's d = 768, V = 50257 and T = 64."""
    if setting != "auto":
        return setting
    if torch.device(device).type != "cuda":
        return CPU_IW_ROWS
    free, _ = torch.cuda.mem_get_info(device)
    return max(1, free // 2 // iw_row_bytes(seq, vocab, width))


def iw_batch(model: LatentModel, ids: torch.Tensor, mask: torch.Tensor, k: int,
             max_rows: int = CPU_IW_ROWS, condition: Condition | None = None) -> BatchEstimates:
    """log p(x) ≈ logsumexp_k [log p(x|z_k) + log p(z_k) - log q(z_k|x)] - log K, z_k ~ q(z|x);
    for a CVAE every term is conditioned on the source c, so it estimates log p(x | c).
    The encoder runs once per sentence (and once per source); only the tiny latent heads run per sample."""
    condition = model.encode_source(condition)
    features = model.encode(ids, mask, condition)
    post = model.sample_posterior(features, k)
    nll = reconstruction_nll(model, ids, mask, post.z, max_rows, condition)  # (K, B)
    log_k = math.log(k)
    nll = nll.float()  # the log-sum-exp runs in fp32 under bf16 autocast too
    log_w = -nll + post.log_p.sum(-1) - post.log_q.sum(-1)
    G = max(model.n_groups, 1)
    log_w_mean = -nll + (post.log_p.sum(-1) - post.log_q.sum(-1)) / G
    return BatchEstimates(log_marginal=torch.logsumexp(log_w, 0) - log_k,
                          log_marginal_layer_mean=torch.logsumexp(log_w_mean, 0) - log_k,
                          rec_nll=nll.mean(0), kl=post.kl.mean(0), features=features, posterior=post)


# The fewest examples each estimator needs to mean anything: AU is a variance over examples;
# MI's aggregate posterior of one sentence is that sentence's own posterior (MI = 0 by construction).
MIN_EXAMPLES = {"iw": 1, "mi": 2, "au": 2}


class TooFewExamples(ValueError):
    """The split (or an MI aggregate) is too small for the estimator: report it, never a number."""


def require_examples(estimator: str, n: int) -> None:
    if n < MIN_EXAMPLES[estimator]:
        raise TooFewExamples(f"{estimator} needs at least {MIN_EXAMPLES[estimator]} examples, got {n}")


def gaussian_neg_entropy(logvar: torch.Tensor) -> torch.Tensor:
    """E_q[log q(z)] of diagonal Gaussians: -D/2 log 2π - 1/2 Σ_d (1 + log σ²_d), over the last axis."""
    return -0.5 * (math.log(2 * math.pi) + 1 + logvar).sum(-1)


@dataclass
class MutualInformation:
    """Per-sentence terms of two MI estimators sharing one aggregate posterior q̂ over M examples.

    paired: log q(z_i|x_i) - log q̂(z_i), the same z_i in both terms (the reported value). It is
      exactly 0 when q(z|x) does not depend on x, and at most log M.
    he2019: E_q[log q(z|x_i)] (closed form) - log q̂(z_i) (He et al. 2019). Same expectation, but
      the closed form and the sampled z_i disagree by sd ≈ sqrt(D/2) per sentence, which swamps
      a small MI at D = 32 x layers (reference §8.3, issue 14)."""

    paired: torch.Tensor  # (N,)
    he2019: torch.Tensor  # (N,)
    m: int  # mixture components of q̂ (of the largest block: each term is at most log m)

    @property
    def value(self) -> float:
        return self.paired.mean().item()


def mutual_information(model: LatentModel, features: torch.Tensor, z: torch.Tensor, logvar: torch.Tensor,
                       group_size: int | None = None) -> MutualInformation:
    """I(x; z) from one posterior path z_i ~ q(z|x_i) per example, with
    q̂(z_i) = (1/M) Σ_j q(z_i | x_j) over the M examples of z_i's block (M = N when group_size is None);
    a last block of one example joins the block before it (alone, its q̂ would be its own posterior).

    features (N, G, d): encoder features; z (N, G, p); logvar (N, G, p): the posterior log-variances
    on that path. For DELLA log q(z_i | x_j) is the hierarchical density, re-running only the
    latent heads along z_i's own path (reference §8.3(b)); its diagonal is log q(z_i | x_i).
    """
    N = z.shape[0]
    M = group_size or N
    bounds = [*range(0, N, M), N]
    if len(bounds) > 2 and bounds[-1] - bounds[-2] < MIN_EXAMPLES["mi"]:
        del bounds[-2]
    require_examples("mi", min(b - a for a, b in zip(bounds, bounds[1:])))
    own, log_agg = [], []
    for start, end in zip(bounds, bounds[1:]):
        log_q = model.log_q_matrix(z[start:end], features[start:end])  # (m, m)
        own.append(log_q.diagonal())
        log_agg.append(torch.logsumexp(log_q, 1) - math.log(log_q.shape[1]))
    own, log_agg = torch.cat(own), torch.cat(log_agg)
    neg_entropy = gaussian_neg_entropy(logvar).sum(-1)  # (N,)
    return MutualInformation(paired=own - log_agg, he2019=neg_entropy - log_agg,
                             m=max(b - a for a, b in zip(bounds, bounds[1:])))


def bootstrap_stderr(terms: torch.Tensor, n_resamples: int = 1000, seed: int = 0) -> float:
    """Standard error of mean(terms), resampling the N sentences with replacement (seeded, so a
    rerun gives the same number). For MI the aggregate posterior is held fixed."""
    require_examples("mi", terms.shape[0])
    idx = torch.randint(terms.shape[0], (n_resamples, terms.shape[0]), generator=torch.Generator().manual_seed(seed))
    return terms.double()[idx].mean(1).std().item()


def path_averaged_means(post: Posterior) -> torch.Tensor:
    """E_q[z | x] (B, G, p): the posterior means averaged over the K sampled paths. A layer above
    DELLA's first has mean mu_l(x, z_<l), so one path's mean is a noisy draw of E_q[z_l | x]."""
    return post.mean.float().mean(0)  # fp32: bf16 autocast leaves the means in bf16


def path_mean_noise(post: Posterior) -> torch.Tensor:
    """(B, G, p): the variance of each path-averaged mean around E_q[z | x], Var_paths(mu) / K
    (unbiased; zero for K = 1, where it cannot be estimated, and on a single latent's exact means)."""
    means = post.mean.float()
    K = means.shape[0]
    return means.var(0, unbiased=True) / K if K > 1 else torch.zeros_like(means[0])


def active_units(means: torch.Tensor, delta: float, noise: torch.Tensor | None = None) -> torch.Tensor:
    """Per dimension: Var_x(E_q[z_d | x]) >= delta. means (N, G, p), each a path average of K draws;
    noise (N, G, p), their variance around E_q[z | x] (`path_mean_noise`): its mean over x, which
    the variance of the averages adds to Var_x(E_q[z | x]), is subtracted, so the path noise of
    DELLA's upper layers does not count as activity at any K. Unbiased variance, as the DELLA code.
    -> bool (G, p)."""
    require_examples("au", means.shape[0])
    variance = means.var(dim=0, unbiased=True)
    return (variance if noise is None else variance - noise.mean(0)) >= delta
