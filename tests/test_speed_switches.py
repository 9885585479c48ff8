"""The speed switches change no numbers: each against the plain path, fp32, 1e-5 relative (or exactly).

- the training loop keeps its sums on the device and syncs once per logged step: its log is
  bit-identical to a plain loop that reads every micro-batch with .item();
- fused AdamW (train.fused_adam) equals the plain AdamW;
- keeping freed host memory (train.reuse_host_memory) trains the same weights, bit for bit;
- torch.compile (train.compile, with and without CUDA graphs) equals the eager step;
- the backbone's SDPA attention equals a hand-written softmax attention;
- DELLA's batched latent path (grouped heads, layer-stacked fusion, the folded value projection)
  equals its equations written plainly, one group and one layer at a time: loss and every gradient.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

from della import host_memory
from della.batches import EncodedSplit, collate, collate_batch, padded_length, shuffled_batches
from della.config import BackboneConfig, ConfigError, RunConfig, TrainConfig
from della.models import backbone as backbone_module
from della.models import bart as bart_module
from della.models import bart_backbone as bart_backbone_module
from della.models.backbone import Injection
from della.models.base import build_model
from della.train import Trainer, compile_model, make_optimizer, train, use_fused_adam
from tests.conftest import REPO, TINY, VOCAB, random_batch, tiny_model
from tests.test_bart_cvae import bart_batch, bart_model
from tests.test_train import run_config

CPU = torch.device("cpu")


def _grads(model) -> list[torch.Tensor]:
    return [p.grad.clone() for p in model.parameters() if p.grad is not None]


def _assert_close(actual: list[torch.Tensor], expected: list[torch.Tensor], rtol: float = 1e-5,
                  atol: float = 1e-12) -> None:
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        assert (a - e).norm() <= rtol * e.norm() + atol


def _plain_loop(model, cfg, split, epoch: int = 0) -> list[tuple]:
    """The training loop written plainly (sync after every micro-batch): (loss, ce, kl_groups) per step."""
    tc, seqs = cfg.train, split.sequences
    optimizer = make_optimizer(model, tc, CPU)
    batches = shuffled_batches(len(seqs), tc.batch_size, seed=cfg.seed * 100_003 + epoch)
    steps = []
    for first in range(0, len(batches), tc.grad_accum):
        group = batches[first: first + tc.grad_accum]
        optimizer.zero_grad(set_to_none=True)
        loss = ce = n = 0.0
        kl = [0.0] * model.n_groups
        for idx in group:
            ids, mask = collate([seqs[j] for j in idx], model.vocab.pad_id)
            out = model(ids, mask, tc.beta)
            (out.loss / len(group)).backward()
            loss, ce, n = loss + out.loss.item() * len(idx), ce + out.ce.sum().item(), n + len(idx)
            kl = [a + b for a, b in zip(kl, out.kl.detach().sum(0).tolist())]
        optimizer.step()
        steps.append((loss / n, ce / n, [k / n for k in kl]))
    return steps


def test_the_training_log_equals_a_plain_synchronous_loop_bit_for_bit(corpus, tmp_path):
    cfg = run_config(corpus, epochs=1, beta_schedule="constant")
    trainer = Trainer(cfg, tmp_path / "run")
    model, rng = copy.deepcopy(trainer.model), torch.get_rng_state()
    trainer.fit()
    torch.set_rng_state(rng)
    expected = _plain_loop(model, cfg, trainer.train_split)
    logged = [json.loads(line) for line in (tmp_path / "run" / "train-log.jsonl").read_text().splitlines()]
    assert [(r["loss"], r["ce"], r["kl_groups"]) for r in logged if r["split"] == "train"] == expected


def test_log_every_thins_the_log_but_every_step_counts_its_tokens(corpus, tmp_path):
    cfg = run_config(corpus, epochs=1, grad_accum=1, log_every=4)  # 96 / 16 = 6 steps: steps 0 and 4 logged
    summary = train(cfg, tmp_path / "run")
    logged = [json.loads(line) for line in (tmp_path / "run" / "train-log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged if r["split"] == "train"] == [0, 4]
    predicted = sum(len(s) - 1 for s in Trainer(cfg, tmp_path / "other").train_split.sequences)
    assert summary["cost"]["tokens_seen"] == predicted


def test_run_json_records_the_resolved_speed_switches_and_why_mfu_is_null(corpus, tmp_path):
    summary = train(run_config(corpus, epochs=1), tmp_path / "run")
    assert summary["speed"] == {"precision": "fp32", "matmul": "fp32", "fused_adam": True, "compile": False,
                                "pad_to_multiple": 1, "reuse_host_memory": host_memory.available(),
                                "attention": "torch.nn.functional.scaled_dot_product_attention"}
    cost = summary["cost"]
    assert cost["mfu"] is None and cost["peak_tflops"] is None and "not trained on a GPU" in cost["mfu_note"]
    assert cost["flops_per_token"] > 0


def test_a_resumed_optimizer_keeps_its_kernel_and_run_json_says_which(corpus, tmp_path, caplog):
    """fused_adam is a speed switch (outside the recipe's fingerprint): flipping it still resumes, but
    the loaded AdamW keeps its checkpoint's kernel, and run.json must name that one."""
    train(run_config(corpus, epochs=1, fused_adam=True), tmp_path / "run")
    (tmp_path / "run" / "run.json").unlink()
    with caplog.at_level(logging.WARNING, logger="della.train"):
        summary = train(run_config(corpus, epochs=2, fused_adam=False), tmp_path / "run")
    assert summary["resumed_from"]["epoch"] == 1
    assert summary["speed"]["fused_adam"] is True and "keeps its checkpoint's AdamW kernel" in caplog.text


@pytest.mark.slow
def test_a_compiled_training_logs_the_eager_trainings_numbers(corpus, tmp_path):
    """The Trainer's compiled path (reduce-overhead: CUDA graphs' step marks; on the CPU the same
    kernels as `true`), three steps of shapes that vary, and run.json records the mode."""
    logs = []
    for mode in (False, "reduce-overhead"):
        summary = train(run_config(corpus, epochs=1, beta_schedule="constant", compile=mode), tmp_path / str(mode))
        assert summary["speed"]["compile"] == mode
        lines = (tmp_path / str(mode) / "train-log.jsonl").read_text().splitlines()
        logs.append([(r["loss"], r["kl"]) for r in map(json.loads, lines) if r["split"] == "train"])
    assert len(logs[0]) == len(logs[1]) == 3
    for (eager_loss, eager_kl), (loss, kl) in zip(*logs):
        assert math.isclose(loss, eager_loss, rel_tol=1e-5) and math.isclose(kl, eager_kl, abs_tol=1e-5)


@pytest.mark.slow
def test_a_compiled_training_compiles_once_while_beta_changes_every_step(corpus, tmp_path):
    """β reaches the model as a device tensor: a changing Python float would recompile the step (and
    on CUDA become a CPU input, kept out of the CUDA graphs). Every batch is padded to one shape, so
    the one compile is the first. On a GPU (benchmarks/gpu_check.sh) the step is one CUDA graph."""
    cfg = run_config(corpus, epochs=1, grad_accum=2, beta_schedule="monotonic", warmup_epochs=1,
                     compile="reduce-overhead", pad_to_multiple=40)
    torch._dynamo.reset()  # the frames other tests compiled count towards Dynamo's recompile limit
    counters = torch._dynamo.utils.counters
    graphs, skips = counters["stats"]["unique_graphs"], counters["inductor"]["cudagraph_skips"]
    train(cfg, tmp_path / "run")
    logged = [json.loads(line) for line in (tmp_path / "run" / "train-log.jsonl").read_text().splitlines()]
    assert len({r["beta"] for r in logged if r["split"] == "train"}) == 3
    assert counters["stats"]["unique_graphs"] - graphs == 1
    if torch.cuda.is_available():  # train.device auto: trained on the GPU
        assert counters["inductor"]["cudagraph_skips"] == skips


# --- train.pad_to_multiple ---------------------------------------------------------------------------
BART_TINY = BackboneConfig(kind="bart", n_layer=3, n_embd=32, n_head=2, n_positions=32, dropout=0.0)


def _split(layout: str | None) -> EncodedSplit:
    """Five examples (a conditional layout: gpt2 or bart, della/data/conditional.py); the batch is the
    first three, shorter than the fourth, so a multiple of 8 pads it."""
    g = torch.Generator().manual_seed(0)

    def words(n: int) -> list[int]:
        return torch.randint(3, VOCAB.size, (n,), generator=g).tolist()

    bos, eos, lengths = VOCAB.bos_id, VOCAB.eos_id, (4, 7, 9, 15, 6)
    if layout is None:
        return EncodedSplit("test", [[bos, *words(n), eos] for n in lengths])
    sources = [[*words(n), eos] if layout == "gpt2" else [bos, *words(n), eos] for n in (5, 3, 4, 11, 2)]
    prefixes = sources if layout == "gpt2" else [[eos, bos]] * len(lengths)
    return EncodedSplit("test", [[*p, *words(n), eos] for p, n in zip(prefixes, lengths)], sources=sources,
                        target_starts=[len(p) for p in prefixes])


def _padded_step(name: str, layout: str | None, multiple: int, **model_args):
    """(loss, gradients, batch widths) of one step on the first three examples of _split(layout)."""
    torch.manual_seed(0)
    model = build_model(name, model_args, VOCAB, backbone_config=BART_TINY if layout == "bart" else TINY,
                        conditional=layout is not None).train()
    ids, mask, condition = collate_batch(_split(layout), [0, 1, 2], VOCAB.pad_id, multiple=multiple)
    torch.manual_seed(1)
    out = model(ids, mask, 0.5, condition)
    out.loss.backward()
    widths = (ids.shape[1], None if condition is None else condition.ids.shape[1])
    return out.loss.detach(), _grads(model), widths


@pytest.mark.parametrize("name,layout", [
    ("gpt2", None), ("embed", None), ("memory", None), ("softmax", None), ("optimus", None), ("della", None),
    ("gpt2", "gpt2"), ("memory", "gpt2"), ("della", "gpt2"), ("bart", "bart"), ("embed", "bart"), ("della", "bart")])
def test_padding_batches_to_a_multiple_keeps_the_loss_and_gradients(name, layout):
    loss, grads, widths = _padded_step(name, layout, 1)
    padded_loss, padded_grads, padded_widths = _padded_step(name, layout, 8)
    for width, padded in zip(widths, padded_widths):
        assert width is padded is None or (padded % 8 == 0 and padded > width)
    assert torch.allclose(padded_loss, loss, rtol=1e-5)
    # a gradient that is zero in exact arithmetic (BART's key biases) is compared at the scale of all
    _assert_close(padded_grads, grads, atol=1e-7 * torch.cat([g.flatten() for g in grads]).norm())


@pytest.mark.parametrize("pool_mask", [True, False])
def test_padding_changes_dellas_sentence_states_only_under_the_official_unmasked_pooling(pool_mask):
    """DELLA's official code pools over pads (pool_mask: false, D6), so there more padding changes
    the numbers, not only the shape (config/README says so)."""
    model, split = tiny_model("della", pool="attention", pool_mask=pool_mask), _split(None)
    x, padded_x = (model.encode(*collate_batch(split, [0, 1, 2], VOCAB.pad_id, multiple=m)[:2]) for m in (1, 8))
    assert torch.allclose(padded_x, x, atol=1e-6) == pool_mask


@pytest.mark.parametrize("model,args,in_recipe", [
    ("della", {}, False), ("della", {"pool": "attention"}, False), ("embed", {}, False),
    ("della", {"pool": "attention", "pool_mask": False}, True)])
def test_pad_to_multiple_is_in_the_recipe_only_where_the_pads_enter_the_numbers(tmp_path, model, args, in_recipe):
    """So a run of the official DELLA never resumes a checkpoint trained with other padding."""
    def recipe(multiple: int) -> dict:
        cfg = RunConfig.from_dict({"dataset": "d", "data_dir": str(tmp_path), "tokenizer_dir": str(tmp_path),
                                   "model": model, "model_args": args, "train": {"pad_to_multiple": multiple}})
        return cfg.training_recipe()

    assert (recipe(1) != recipe(8)) == in_recipe
    assert ("pad_to_multiple" in recipe(8)["optimisation"]["train"]) == in_recipe


# --- the GPU path: nothing read back to the host in a step ------------------------------------------
def _step_without_host_reads(name: str, kind: str, padded: bool, host_reads: bool, monkeypatch):
    """(loss, gradients, posterior-encoder width) of one step; host_reads=False is what a GPU or a
    compiled step runs: no mask dropped after reading that nothing is padded, and BART's posterior
    input at its widest instead of at the longest pair's length (della.models.backbone.can_inspect)."""
    if not host_reads:
        for module in (backbone_module, bart_backbone_module, bart_module):
            monkeypatch.setattr(module, "can_inspect", lambda t: False)
    if kind == "bart":
        model = bart_model(name).train()
        ids, mask, condition = bart_batch(*([] if padded else [0, (4, 4, 4), (5, 5, 5)]))
        width = model.source_and_target(ids, mask, condition)[0].shape[1] if name != "bart" else None
    else:
        model, (ids, mask), condition, width = tiny_model(name).train(), random_batch(pad_last=3 * padded), None, None
    torch.manual_seed(1)
    out = model(ids, mask, 0.5, condition)
    out.loss.backward()
    return out.loss.detach(), _grads(model), width


@pytest.mark.parametrize("name,kind", [("embed", "gpt2"), ("della", "gpt2"), ("bart", "bart"), ("embed", "bart"),
                                       ("memory", "bart"), ("softmax", "bart"), ("della", "bart")])
@pytest.mark.parametrize("padded", [True, False])
def test_a_step_without_host_reads_gives_the_same_loss_and_gradients(name, kind, padded, monkeypatch):
    loss, grads, width = _step_without_host_reads(name, kind, padded, True, monkeypatch)
    gpu_loss, gpu_grads, gpu_width = _step_without_host_reads(name, kind, padded, False, monkeypatch)
    if width is not None:  # a BART VAE's posterior reads the widest pair, not the longest one
        assert gpu_width > width
    assert torch.allclose(gpu_loss, loss, rtol=1e-5)
    _assert_close(gpu_grads, grads, atol=1e-7 * torch.cat([g.flatten() for g in grads]).norm())


OFFICIAL_DELLA = {"kl_aggregate": "mean", "first_prior": "learned", "tie_lm_head": False, "pool": "attention",
                  "pool_mask": False, "clamp": 5.0}


@pytest.mark.parametrize("name,layout,args", [
    *[(name, None, {}) for name in ("gpt2", "embed", "memory", "softmax", "optimus", "della")],
    *[("della", None, args) for args in (OFFICIAL_DELLA, {"use_bow": True}, {"bn_gamma": 0.5}, {"kl_threshold": 0.1},
                                         {"fusion": "add"}, {"shared_latent": True}, {"recurrence": False},
                                         {"kl_layers": "last"})],
    *[(name, "gpt2", {}) for name in ("gpt2", "embed", "memory", "softmax", "della")],
    *[(name, "bart", {}) for name in ("bart", "embed", "memory", "softmax", "della")]])
def test_every_models_training_step_traces_as_one_graph(name, layout, args):
    """No host read and no graph break in a training step (fullgraph fails on either), so on a GPU it
    never waits for the queued kernels and compiles into one graph: one CUDA graph per batch shape."""
    torch.manual_seed(0)
    model = build_model(name, args, VOCAB, backbone_config=BART_TINY if layout == "bart" else TINY,
                        conditional=layout is not None).train()
    ids, mask, condition = collate_batch(_split(layout), [0, 1, 2], VOCAB.pad_id)
    torch._dynamo.reset()
    step = torch.compile(model, backend="eager", fullgraph=True)
    step(ids, mask, torch.tensor(0.5), condition).loss.backward()


def test_padded_length_rounds_up_to_the_multiple_never_past_the_splits_longest():
    assert [padded_length(n, 8, 20) for n in (1, 8, 9, 16, 17, 20)] == [8, 8, 16, 16, 20, 20]
    assert [padded_length(n, 1, 20) for n in (1, 13, 20)] == [1, 13, 20]


def test_pad_to_multiple_takes_a_positive_integer_and_names_the_key_otherwise():
    assert TrainConfig(pad_to_multiple=8).pad_to_multiple == 8
    for wrong in (0, True, 1.5, "8"):
        with pytest.raises(ConfigError, match=f"train.pad_to_multiple = {wrong!r}"):
            TrainConfig(pad_to_multiple=wrong)


def test_compile_takes_false_true_or_reduce_overhead_and_names_the_key_otherwise():
    assert compile_model(model := tiny_model("della"), False) is model
    for mode in (False, True, "reduce-overhead"):
        TrainConfig(compile=mode)
    for wrong in ("max-autotune", 1, "true"):
        with pytest.raises(ConfigError, match=f"train.compile = {wrong!r}"):
            TrainConfig(compile=wrong)


def test_fused_adam_auto_means_cuda_and_cpu():
    assert use_fused_adam(TrainConfig(), torch.device("cuda")) is True
    assert use_fused_adam(TrainConfig(), CPU) is True
    assert use_fused_adam(TrainConfig(), torch.device("mps")) is False
    assert use_fused_adam(TrainConfig(fused_adam=False), CPU) is False
    assert use_fused_adam(TrainConfig(fused_adam=True), CPU) is True
    assert use_fused_adam(TrainConfig(fused_adam=False), torch.device("cuda")) is False


def test_reuse_host_memory_auto_means_a_cpu_run_under_glibc(monkeypatch):
    for wrong in ("yes", 1.5, None):
        with pytest.raises(ConfigError, match=f"train.reuse_host_memory = {wrong!r}"):
            TrainConfig(reuse_host_memory=wrong)
    monkeypatch.setattr(host_memory, "available", lambda: True)
    assert host_memory.resolve("auto", CPU) is True
    assert host_memory.resolve("auto", torch.device("cuda")) is False
    assert host_memory.resolve(False, CPU) is False and host_memory.resolve(True, torch.device("cuda")) is True
    monkeypatch.setattr(host_memory, "available", lambda: False)
    assert host_memory.resolve("auto", CPU) is False and host_memory.resolve(False, CPU) is False
    with pytest.raises(ConfigError, match="train.reuse_host_memory = true needs glibc"):
        host_memory.resolve(True, CPU)


needs_glibc = pytest.mark.skipif(not host_memory.available(), reason="mallopt is glibc's (Linux)")

# A 64 MiB block, over glibc's largest mmap threshold (32 MiB): by default mmapped afresh at each
# allocation. Kept, it comes from the heap, and once the heap holds a free span big enough (torch's
# 64-byte-aligned request is a little more than the block it freed: here 2 to 4 rounds), a new one
# faults in (almost) no page.
KEPT_BLOCK_PROBE = textwrap.dedent("""
    import resource, torch
    from della import host_memory
    host_memory.keep_freed_memory(True)
    n = 16 * 2**20
    for _ in range(8):
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        block = None
        block = torch.ones(n)
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    heap = next(line.split()[0] for line in open("/proc/self/maps") if line.rstrip().endswith("[heap]"))
    low, high = (int(end, 16) for end in heap.split("-"))
    print(low <= block.data_ptr() < high, faults, 4 * n // 4096)
""")


@needs_glibc
def test_kept_host_memory_serves_a_big_block_from_the_heap_and_refills_it_without_faults():
    proc = subprocess.run([sys.executable, "-c", KEPT_BLOCK_PROBE], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    in_heap, faults, pages = proc.stdout.split()
    assert in_heap == "True" and int(faults) < int(pages) // 100, proc.stdout


@needs_glibc
def test_reuse_host_memory_trains_the_same_weights_bit_for_bit(corpus, tmp_path):
    weights = []
    for keep in (True, False):
        summary = train(run_config(corpus, epochs=1, reuse_host_memory=keep), tmp_path / str(keep))
        assert summary["speed"]["reuse_host_memory"] is keep and host_memory._kept is keep
        weights.append(torch.load(tmp_path / str(keep) / "model" / "model.pt", weights_only=True))
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][key], weights[1][key]) for key in weights[0])


def test_fused_adamw_equals_the_plain_adamw():
    models = [tiny_model("della").train() for _ in range(2)]
    optimizers = [make_optimizer(m, TrainConfig(fused_adam=fused), CPU) for m, fused in zip(models, (False, True))]
    assert [o.defaults["fused"] for o in optimizers] == [False, True]
    ids, mask = random_batch()
    for step in range(3):
        for model, optimizer in zip(models, optimizers):
            optimizer.zero_grad(set_to_none=True)
            torch.manual_seed(step)
            model.loss(ids, mask, beta=1.0).loss.backward()
            optimizer.step()
    _assert_close(list(models[1].parameters()), list(models[0].parameters()))


@pytest.mark.slow
@pytest.mark.parametrize("mode", [True, "reduce-overhead"])  # the CPU has no CUDA graphs: the same kernels
def test_a_compiled_step_equals_the_eager_step(mode):
    model = tiny_model("della").train()
    ids, mask = random_batch()
    compiled = compile_model(model, mode)  # as Trainer compiles
    losses, grads = [], []
    for step in (compiled, model):
        model.zero_grad(set_to_none=True)
        torch.manual_seed(1)
        out = step(ids, mask, 1.0)
        out.loss.backward()
        losses.append(out.loss.item())
        grads.append(_grads(model))
    assert math.isclose(losses[0], losses[1], rel_tol=1e-5)
    _assert_close(grads[0], grads[1])


def _plain_della_loss(model, ids, mask, beta: float) -> torch.Tensor:
    """DELLA's training loss (`paper` LMF) written plainly from its weights: one latent group and one
    fused layer at a time, Eqs. 7-9, with no batching, folding, masking or caching."""
    x, B, p, d = model.encode(ids, mask), ids.shape[0], model.latent_size, model.backbone.n_embd

    def linear(heads, g, v):
        return F.linear(v, heads.weight[g], None if heads.bias is None else heads.bias[g])

    h = z = torch.zeros(B, p)
    zs, kl, noise = [], 0.0, torch.randn(model.n_groups, B, p)  # the noise of every group drawn at once
    for g in range(model.n_groups):
        standard_root = g == 0 and model.config.first_prior == "standard"  # p(z_1) = N(0, I), h_1 = 0
        h = h if standard_root else torch.tanh(linear(model.cell_hh, g, h) + linear(model.cell_ih, g, z))
        qm, ql = (linear(model.recog_x, g, x[:, g]) + linear(model.recog_h, g, h)).chunk(2, -1)
        pm, pl = torch.zeros(2, B, p) if standard_root else linear(model.prior, g, h).chunk(2, -1)
        z = qm + torch.exp(0.5 * ql) * noise[g]
        zs.append(z)
        kl = kl + 0.5 * (pl - ql + (torch.exp(ql) + (qm - pm) ** 2) / torch.exp(pl) - 1).sum(-1)

    def fused(g):  # V' = (sum_j T_j [V; 1]) * (sum_j Z_j [z; 1])
        fusion, ones = model.fusion, torch.ones(B, 1)
        factor = torch.cat([zs[g], ones], -1) @ fusion.latent_weight[g].sum(0).T + fusion.latent_bias[g].sum(0)

        def qkv(hidden, c_attn):
            q, k, v = c_attn(hidden).split(d, dim=2)
            v1 = torch.cat([v, torch.ones(*v.shape[:2], 1)], -1)
            return q, k, (v1 @ fusion.text_weight[g].sum(0).T + fusion.text_bias[g].sum(0)) * factor[:, None]
        return qkv

    inject = Injection(qkv={layer: fused(g) for g, layer in enumerate(model.layers)})
    logits = model.backbone(ids, causal=True, inject=inject).hidden @ model.backbone.wte.weight.T
    ce = F.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none")
    return (((ce * mask[:, 1:]).sum(1)) + beta * kl).mean()


@pytest.mark.parametrize("first_prior", ["learned", "standard"])
def test_dellas_batched_latent_path_equals_its_equations_written_plainly(first_prior):
    """Loss and every gradient, fp32, 1e-5 relative; 4 x 9 tokens > d = 32, so the decoder takes
    the folded value projection. Under the standard prior the first prior head takes no part."""
    model = tiny_model("della", first_prior=first_prior).train()
    ids, mask = random_batch()
    results = []
    for loss_fn in (lambda: model.loss(ids, mask, beta=0.7).loss, lambda: _plain_della_loss(model, ids, mask, 0.7)):
        model.zero_grad(set_to_none=True)
        torch.manual_seed(3)
        loss = loss_fn()
        loss.backward()
        results.append((loss.detach(), _grads(model)))
    (fast, fast_grads), (plain, plain_grads) = results
    assert math.isclose(fast.item(), plain.item(), rel_tol=1e-5)
    assert len(fast_grads) == len(list(model.parameters()))  # every weight takes part
    _assert_close(fast_grads, plain_grads)


def _softmax_attention(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None):
    """Attention written out: softmax(q k^T * scale + mask) v."""
    assert dropout_p == 0.0
    scores = q @ k.transpose(-2, -1) * scale
    T, K = scores.shape[-2:]
    allowed = torch.ones(T, K, dtype=torch.bool).tril(K - T) if is_causal else attn_mask
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    return scores.softmax(-1) @ v


@torch.no_grad()
def test_sdpa_attention_equals_a_hand_written_softmax_attention(monkeypatch):
    """The encoder pass (padding mask), the decoder pass (causal) and a cached step, fp32, 1e-5."""
    model = tiny_model("della")
    ids, mask = random_batch(b=4, t=10, pad_last=4)

    def passes():
        features = model.encode(ids, mask)
        z = model.sample_prior(4, generator=torch.Generator().manual_seed(0))
        logits, cache = model.decode(ids[:, :6], z, use_cache=True)
        step, _ = model.decode(ids[:, 6:7], z, cache=cache)
        return [features, model.token_nll(ids, mask, z), logits, step]

    fast = passes()
    monkeypatch.setattr(backbone_module.F, "scaled_dot_product_attention", _softmax_attention)
    _assert_close(fast, passes())
