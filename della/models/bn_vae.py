"""BN-VAE (Zhu et al., ACL 2020): batch normalisation of the posterior means, a trick against KL vanishing.

Each latent dimension's posterior mean is normalised over the batch and scaled by a fixed γ,
mu' = γ (mu - E_B[mu]) / sqrt(Var_B[mu] + eps) + b, with a learned shift b. The batch then has
E_B[mu'^2] = γ² + b², so the KL to N(0, I), which contains mu'^2 / 2 per dimension, cannot
vanish on average (the paper's Table 5 fixes γ = 1).
"""

from __future__ import annotations

import torch
from torch import nn


class PosteriorMeanBatchNorm(nn.Module):
    """Normalises means (..., p) per dimension: batch statistics in training, running ones in eval
    (so log q(z | x) is one fixed map of x there, as the estimators need)."""

    def __init__(self, p: int, gamma: float):
        super().__init__()
        if gamma <= 0:
            raise ValueError(f"model_args.bn_gamma = {gamma!r}; expected a positive number or null")
        self.gamma = gamma
        self.norm = nn.BatchNorm1d(p, affine=False)
        self.shift = nn.Parameter(torch.zeros(p))

    def forward(self, mean: torch.Tensor) -> torch.Tensor:
        flat = self.norm(mean.reshape(-1, mean.shape[-1]))
        return (self.gamma * flat + self.shift).view(mean.shape)
