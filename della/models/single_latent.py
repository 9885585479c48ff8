"""The single-latent Transformer VAE shared by the Embedding, Memory and Softmax baselines.

One global z (p = 32) with an N(0, I) prior. The encoder is DELLA's kind (reference §9.1,
TransformerCVAE): the shared GPT-2 run bidirectionally, attention pooling over the final
(ln_f) states with the padding mask (`pool: first_token` takes the first token's final state
instead, as Optimus's [CLS] pooler), and one Linear to [mu; log sigma^2]. Only how z enters
the decoder differs between the subclasses (their `injection` / `output_logits`).

As a CVAE, the condition is encoded as DELLA's is (an extra encoder pass over the source, pooled
by the same kind of pooling) and the prior becomes p(z | c) = N(W_c c): one Linear without bias,
so with W_c = 0 it is the unconditional N(0, I). The posterior sees the source through its input
(the GPT-2 CVAE encodes source + target), as DELLA's does.
"""

from __future__ import annotations

import torch
from torch import nn

from della.models.base import (Condition, LatentModel, Posterior, build_pooling, gaussian_kl, gaussian_log_density,
                               standard_normal)
from della.models.bn_vae import PosteriorMeanBatchNorm
from della.models.configs import SingleLatentConfig


class SingleLatentVAE(LatentModel):
    n_groups = 1

    def __init__(self, config: SingleLatentConfig, backbone, vocab, conditional: bool = False):
        super().__init__(config, backbone, vocab, conditional)
        d, p = backbone.n_embd, config.latent_size
        self.latent_size = p
        self.pool = build_pooling(config.pool, d)
        self.to_posterior = nn.Linear(d, 2 * p)
        nn.init.normal_(self.to_posterior.weight, std=0.02)
        nn.init.zeros_(self.to_posterior.bias)
        self.bn = None if config.bn_gamma is None else PosteriorMeanBatchNorm(p, config.bn_gamma)
        self.bow = None
        if config.use_bow:
            self.bow = nn.Linear(p, d)
            nn.init.normal_(self.bow.weight, std=0.02)
            nn.init.zeros_(self.bow.bias)
        if conditional:
            self.condition_pool = build_pooling(config.pool, d)
            self.condition_prior = self.latent_projection(2 * p, n_in=d)

    def latent_projection(self, out_features: int, n_in: int | None = None) -> nn.Linear:
        """W z without bias, N(0, 0.02^2) init: how each paradigm maps z into the decoder."""
        layer = nn.Linear(n_in or self.latent_size, out_features, bias=False)
        nn.init.normal_(layer.weight, std=0.02)
        return layer

    def encode(self, input_ids, mask, condition=None):
        self.check_condition(condition)
        out = self.backbone(input_ids, mask, causal=False)
        x = self.pool(out.hidden, mask)[:, None, :]  # (B, 1, d)
        return x if condition is None else torch.cat([x, self.encode_condition(condition)], -1)

    def encode_condition(self, condition: Condition) -> torch.Tensor:
        """c (B, 1, d): the pooled encoder pass over the source."""
        out = self.backbone(condition.ids, condition.mask, causal=False)
        return self.condition_pool(out.hidden, condition.mask)[:, None, :]

    def _prior_params(self, c: torch.Tensor | None, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """p(z [| c]): N(0, I) shaped like `like`, or N(W_c c) for a CVAE."""
        if c is None:
            return torch.zeros_like(like), torch.zeros_like(like)
        mean, logvar = self.condition_prior(c).chunk(2, dim=-1)
        return mean, logvar

    def _posterior_params(self, features):
        x, _ = self.split_features(features)
        mean, logvar = self.to_posterior(x).chunk(2, dim=-1)  # (B, 1, p) each
        bn = getattr(self, "bn", None)  # Optimus inherits this method but not __init__: no BN-VAE
        if bn is not None:
            mean = bn(mean)
        return mean, logvar

    def sample_posterior(self, features, k):
        mean, logvar = (t.float() for t in self._posterior_params(features))  # z in fp32: see Della's
        eps = torch.randn((k, *mean.shape), device=mean.device)
        z = mean + torch.exp(0.5 * logvar) * eps  # (K, B, 1, p)
        prior_mean, prior_logvar = self._prior_params(self.split_features(features)[1], mean)
        kl = gaussian_kl(mean, logvar, prior_mean, prior_logvar).expand(k, -1, -1)
        return Posterior(z=z, log_q=gaussian_log_density(z, mean, logvar),
                         log_p=gaussian_log_density(z, prior_mean, prior_logvar), kl=kl,
                         mean=mean.expand(k, -1, -1, -1), logvar=logvar.expand(k, -1, -1, -1))

    def sample_prior(self, n, generator=None, condition=None):
        self.check_condition(condition)
        eps = standard_normal((n, 1, self.latent_size), generator, self.device)
        if condition is None:
            return eps
        mean, logvar = self._prior_params(self.encode_condition(condition), eps)
        return mean + torch.exp(0.5 * logvar) * eps

    def log_q_matrix(self, z, features):
        mean, logvar = self._posterior_params(features)  # (N, 1, p)
        return gaussian_log_density(z[:, None], mean[None], logvar[None]).sum(-1)  # (M, N)
