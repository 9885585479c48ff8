"""train.precision: bf16 autocast of the forward against fp32, on CPU (bf16 autocast runs there).

On a CUDA machine every test runs on the GPU too. Stated tolerances, for tiny random models (bf16
keeps 8 bits of mantissa, relative step 2^-8): the loss of one step within 1e-3 relative, all gradients together within 2e-2 relative (L2), the
IW estimate of log p(x) within 1e-3 relative per sentence. The densities, KL, cross-entropy and
the IW log-sum-exp are fp32 under bf16, and so is the posterior draw z; fp32 changes nothing at all.
"""

from __future__ import annotations

import math

import pytest
import torch

from della.config import ConfigError, TrainConfig
from della.estimators import iw_batch
from della.models.base import LatentModel
from della.train import autocast
from tests.conftest import random_batch, tiny_model

DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]
LATENT_MODELS = ("della", "embed", "memory", "softmax", "optimus")  # every paradigm, on the GPU too


def _setup(name: str, device: str, **batch):
    ids, mask = random_batch(**batch)
    return tiny_model(name).to(device), ids.to(device), mask.to(device)


def _step(model, ids, mask, precision: str):
    """Loss, the loss terms and all gradients of one training step at a fixed posterior noise."""
    model.zero_grad(set_to_none=True)
    torch.manual_seed(1)
    with autocast(ids.device, precision):
        out = model.loss(ids, mask, beta=1.0)
    out.loss.backward()
    grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    return out, grads


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ("gpt2", *LATENT_MODELS))
def test_a_bf16_step_matches_fp32_within_the_stated_tolerance(name, device):
    model, ids, mask = _setup(name, device, b=6, t=12)
    model.train()
    fp32, g32 = _step(model, ids, mask, "fp32")
    bf16, g16 = _step(model, ids, mask, "bf16")
    assert not torch.equal(g16, g32)  # autocast did take effect
    assert abs(bf16.loss.item() - fp32.loss.item()) <= 1e-3 * abs(fp32.loss.item())
    assert ((g16 - g32).norm() / g32.norm()).item() <= 2e-2
    assert bf16.loss.dtype == bf16.ce.dtype == bf16.kl.dtype == torch.float32


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", LATENT_MODELS)
@torch.no_grad()
def test_the_densities_and_kl_stay_fp32_under_bf16(name, device):
    model, ids, mask = _setup(name, device)
    with autocast(ids.device, "bf16"):
        features = model.encode(ids, mask)
        post = model.sample_posterior(features, k=3)
        log_q = model.log_q_matrix(post.z[0], features)
    assert post.z.dtype == post.mean.dtype == torch.float32  # the draw (see the test below)
    assert post.log_q.dtype == post.log_p.dtype == post.kl.dtype == log_q.dtype == torch.float32


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ("della", "embed"))
@torch.no_grad()
def test_the_bag_of_words_log_softmax_is_fp32_under_bf16(name, device):
    """CPU autocast leaves log_softmax in bf16 (CUDA's promotes it): the BoW loss casts its logits itself."""
    model = tiny_model(name, use_bow=True).to(device)
    ids, mask = (t.to(device) for t in random_batch(b=6, t=12))
    z = torch.randn(ids.shape[0], model.n_groups, model.latent_size, device=device)
    with autocast(ids.device, "bf16"):
        loss = model.bow_loss(ids, mask[:, 1:], z)
        logits = LatentModel.output_logits(model, model.bow(z[:, -1])[:, None, :], z)[:, 0]
    expected = -(logits.float().log_softmax(-1).gather(1, ids[:, 1:]) * mask[:, 1:]).sum(1)
    torch.testing.assert_close(loss, expected, rtol=0, atol=0)


def _sharp_posterior(model, mean: float, std: float) -> None:
    """q(z | x) = N(mean, std^2) in every dimension (and latent group), whatever x."""
    head = model.recog_x if hasattr(model, "recog_x") else model.to_posterior
    p = model.latent_size
    with torch.no_grad():
        head.weight.zero_()
        head.bias[..., :p], head.bias[..., p:] = mean, 2 * math.log(std)
        if hasattr(model, "recog_h"):
            model.recog_h.weight.zero_()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ("della", "embed"))
@torch.no_grad()
def test_the_posterior_draw_is_exact_under_bf16(name, device):
    """z ~ q(z | x) under bf16 autocast: (z - mean) / std is N(0, 1), even for q = N(3, 0.003^2),
    narrower than bf16's step at 3 (2^-6). A z rounded to bf16 would sit on that grid (mostly on 3
    itself), and the importance weights, log q taken at it, would be biased (optimistic)."""
    model, ids, mask = _setup(name, device)
    _sharp_posterior(model, 3.0, 0.003)
    torch.manual_seed(3)
    with autocast(ids.device, "bf16"):
        post = model.sample_posterior(model.encode(ids, mask), k=64)
    eps = ((post.z - post.mean) * torch.exp(-0.5 * post.logvar)).flatten()  # >= 2048 draws
    assert abs(eps.mean().item()) < 0.15 and abs(eps.var().item() - 1) < 0.15


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ("gpt2", *LATENT_MODELS))
@torch.no_grad()
def test_the_iw_estimate_in_bf16_matches_fp32(name, device):
    model, ids, mask = _setup(name, device, b=6, t=12)
    estimates = {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(2)
        with autocast(ids.device, precision):
            estimates[precision] = iw_batch(model, ids, mask, k=8).log_marginal
    assert estimates["bf16"].dtype == torch.float32
    assert not torch.equal(estimates["bf16"], estimates["fp32"])
    torch.testing.assert_close(estimates["bf16"], estimates["fp32"], rtol=1e-3, atol=0)


def test_fp32_is_the_untouched_path():
    """autocast(fp32) is disabled: bit-identical loss and gradients to no context at all."""
    model, ids, mask = _setup("della", "cpu")
    model.train()
    out, grads = _step(model, ids, mask, "fp32")
    model.zero_grad(set_to_none=True)
    torch.manual_seed(1)
    plain = model.loss(ids, mask, beta=1.0)
    plain.loss.backward()
    assert torch.equal(out.loss, plain.loss)
    assert torch.equal(grads, torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))


def test_an_unknown_precision_is_an_error_naming_the_key():
    with pytest.raises(ConfigError, match="train.precision = 'fp16'"):
        TrainConfig(precision="fp16")
