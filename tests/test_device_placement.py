"""Every tensor a model makes follows its inputs' device: checked on torch's `meta` device, which
stands for a GPU here. A tensor made on the CPU (a mask, a position index) fails beside meta inputs as
it would beside CUDA ones, so a CPU-only machine catches what would otherwise crash the first GPU run."""

from __future__ import annotations

import pytest
import torch

from della.estimators import iw_batch
from della.models import MODELS, runs_on
from della.models.backbone import BackboneConfig
from della.models.base import Condition, build_model
from tests.conftest import VOCAB

META = torch.device("meta")
BART = BackboneConfig(kind="bart", n_layer=2, n_embd=32, n_head=2, n_positions=32, dropout=0.1)
GPT2 = BackboneConfig(n_layer=2, n_embd=32, n_head=2, n_positions=32, dropout=0.1)
# Not Optimus: its encoder is transformers' BertModel, which reads the mask's values on the host
# (`.all()`), a read meta tensors cannot answer; its own code is covered by the GPU tests (test_precision).
HOST_READS = {"optimus"}


def cases() -> list:
    out = []
    for name in sorted(set(MODELS.names()) - HOST_READS):
        latent = MODELS.get(name).has_latent
        for backbone, conditional in ((GPT2, False), (GPT2, True), (BART, True)):
            if not runs_on(name, backbone.kind) or (conditional and not MODELS.get(name).supports_condition):
                continue
            task = "cvae" if conditional else "lm"
            out.append(pytest.param(name, backbone, conditional, latent, id=f"{name}-{backbone.kind}-{task}"))
    return out


def meta_batch(kind: str, conditional: bool, b: int = 3, t: int = 6):
    """(ids, mask, condition) on the meta device, laid out as the backbone's batches are."""
    ids = torch.randint(3, VOCAB.size, (b, t), device=META)
    mask = torch.ones(b, t, device=META)
    if not conditional:
        return ids, mask, None
    source = torch.randint(3, VOCAB.size, (b, 4), device=META)
    start = torch.full((b,), 4 if kind == "gpt2" else 2, device=META)
    if kind == "gpt2":  # the decoder reads source + target, the source as its prefix
        ids, mask = torch.cat([source, ids], 1), torch.ones(b, 4 + t, device=META)
    return ids, mask, Condition(source, torch.ones(b, 4, device=META), start)


@pytest.mark.parametrize("name, backbone, conditional, latent", cases())
def test_training_and_iw_passes_keep_every_tensor_on_the_models_device(name, backbone, conditional, latent):
    torch.manual_seed(0)
    model = build_model(name, {"latent_size": 4} if latent else {}, VOCAB, backbone_config=backbone,
                        conditional=conditional).to(META).train()
    ids, mask, condition = meta_batch(backbone.kind, conditional)
    loss = model(ids, mask, torch.tensor(1.0, device=META), condition).loss
    loss.backward()
    assert loss.device == META and all(p.grad is None or p.grad.device == META for p in model.parameters())
    if latent:
        estimate = iw_batch(model.eval(), ids, mask, k=2, condition=condition)
        assert estimate.log_marginal.device == META



@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: a host generator is refused only by CUDA draws")
@pytest.mark.parametrize("name", ["della", "embed"])
def test_prior_samples_on_cuda_from_a_seeded_host_generator_equal_the_cpus(name):
    """`generate` seeds a host generator; on a GPU the prior draws must take it and give the CPU's latents."""
    torch.manual_seed(0)
    model = build_model(name, {"latent_size": 4}, VOCAB, backbone_config=GPT2)
    on_cpu = model.sample_prior(5, generator=torch.Generator().manual_seed(1))
    on_gpu = model.cuda().sample_prior(5, generator=torch.Generator().manual_seed(1))
    assert on_gpu.device.type == "cuda"
    torch.testing.assert_close(on_gpu.cpu(), on_cpu)
