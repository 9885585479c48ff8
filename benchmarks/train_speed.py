"""Train-step time (forward, backward, AdamW step) of DELLA vs Embed-VAE vs the plain LM, with
tokens/s and model FLOPs utilisation (MFU).

Sizes (latent 32): (a) 4 layers, d=256, vocab 8000, batch 32, seq 32; (b) 12 layers, d=768, vocab
50257, batch 8, seq 32 (the CPU reference); (b32) as (b) at batch 32, seq 128; (c) GPT-2 small
DELLA at the paper's batch 16 (App. A.1; the official README's), seq 64. Each size runs at every
--precisions (fp32, bf16: autocast as `train.precision`) with the training's own optimizer
(`train.fused_adam: auto`) and host allocator (`train.reuse_host_memory: auto`). Models are timed
round-robin in one process and the median step is reported; a ratio is the median of each round's
ratio (a round's models run back to back, so drift between rounds cancels out of it). The FLOP floor
of a VAE step is one encoder pass without the LM head plus one decoder pass (della.flops.vae_lm_floor);
MFU is della.flops' count over the card's dense peak (della.flops.PEAK_TFLOPS by device name, or
--peak-tflops).

    python benchmarks/train_speed.py [--sizes a,b] [--precisions fp32] [--steps 12] [--threads 2]
                                     [--device cuda] [--compile [reduce-overhead]] [--peak-tflops 989] [--quick]

--quick: miniature shapes (2 layers, d=64, vocab 512, batch 4, seq 16) and 2 steps, to dry-run every
code path on a CPU; its numbers mean nothing.

--task conditional times the CVAEs of Tables 2 and 9 instead: the plain backbone (GPT-2, BART) against
Embed and DELLA on it, each a CVAE on (source, target) pairs of `seq` tokens each (GPT-2: the decoder
reads source + target; BART: the encoder the source, the decoder the target), at sizes (a) and (c);
BART's n_layer is the size's over two (encoder + decoder layers = the GPT-2's layers: BART-base at (c)).
The FLOP floor is della.flops.cvae_floor.

Each model's line also gives its ops per step: the aten ops one forward + backward dispatches (views
excluded; the optimizer is left out, one fused kernel on CUDA). On a GPU every op is at least one
kernel launch, and a small model's step there is bound by launches, not arithmetic (issue 11), so
the ops ratio is what a GPU step ratio tends to in that regime; it is counted the same on any device.

    python benchmarks/train_speed.py --task conditional [--backbones gpt2,bart] [--sizes a,c]
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import statistics
import time

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from della import host_memory
from della.config import BackboneConfig, TrainConfig
from della.cost import device_text
from della.flops import PEAK_TFLOPS, cvae_floor, matmul_precision, peak_tflops, train_flops_per_sequence, vae_lm_floor
from della.models.base import Condition, Vocab, build_model
from della.provenance import describe_device
from della.train import autocast, begin_step, compile_model, make_optimizer, synchronize, to_device


@dataclasses.dataclass(frozen=True)
class Size:
    n_layer: int
    n_embd: int
    n_head: int
    vocab: int
    batch: int
    seq: int


SIZES = {
    "a": Size(4, 256, 4, 8000, 32, 32),
    "b": Size(12, 768, 12, 50257, 8, 32),
    "b32": Size(12, 768, 12, 50257, 32, 128),
    "c": Size(12, 768, 12, 50257, 16, 64),
}
QUICK = Size(2, 64, 2, 512, 4, 16)
LATENT = 32
MODELS = ("gpt2", "embed", "della")
PLAIN = ("gpt2", "bart")  # the plain backbones, without a latent
# issue 11: DELLA/LM within this much of the floor, DELLA/Embed at most this
TARGETS = {"cpu": (0.05, 1.10), "cuda": (0.15, 1.15)}


# ops that only alias their input (no kernel on any device)
VIEW_OPS = {"view", "_unsafe_view", "reshape", "_reshape_alias", "t", "transpose", "permute", "expand", "select",
            "slice", "split", "split_with_sizes", "chunk", "unbind", "narrow", "unsqueeze", "squeeze", "alias",
            "as_strided", "detach"}


class OpCounter(TorchDispatchMode):
    """Counts the aten ops dispatched inside it, views excluded."""

    def __init__(self):
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket.__name__ not in VIEW_OPS:
            self.ops += 1
        return func(*args, **(kwargs or {}))


def batch(size: Size, vocab: Vocab, device: torch.device, kind: str | None):
    """Random (ids, mask, condition): sentences of `seq` tokens (kind None), or CVAE pairs of a
    `seq`-token source and a `seq`-token target laid out for the backbone `kind`."""
    def tokens(n: int) -> torch.Tensor:
        return torch.randint(3, size.vocab, (size.batch, n), device=device)

    ones = torch.ones(size.batch, dtype=torch.long, device=device)
    if kind is None:
        ids = tokens(size.seq)
        ids[:, 0] = vocab.bos_id
        return ids, torch.ones_like(ids, dtype=torch.float), None
    source = tokens(size.seq)
    if kind == "gpt2":  # source + target, the source (its last token standing for </s>) as the prefix
        ids = torch.cat([source, tokens(size.seq)], 1)
        condition = Condition(source, torch.ones_like(source, dtype=torch.float), ones * size.seq)
    else:  # the decoder reads the target, the encoder the source
        ids = tokens(size.seq)
        condition = Condition(source, torch.ones_like(source, dtype=torch.float), ones * 2)
    return ids, torch.ones_like(ids, dtype=torch.float), condition


def make_step(name: str, size: Size, device: torch.device, precision: str, compile_mode: bool | str,
              kind: str | None = None):
    """kind: None for the sentence task on GPT-2; gpt2 | bart for a CVAE on that backbone."""
    torch.manual_seed(0)
    vocab = Vocab(size=size.vocab, bos_id=1, eos_id=2, pad_id=0)
    layers = size.n_layer // 2 if kind == "bart" else size.n_layer
    backbone = BackboneConfig(kind=kind or "gpt2", n_layer=layers, n_embd=size.n_embd, n_head=size.n_head,
                              n_positions=max(64, 2 * size.seq), dropout=0.1)
    args = {} if name in PLAIN else {"latent_size": LATENT}
    model = build_model(name, args, vocab, backbone_config=backbone, conditional=kind is not None)
    model = model.to(device).train()
    opt = make_optimizer(model, TrainConfig(lr=1e-4), device)
    step_fn = compile_model(model, compile_mode)
    ids, mask, condition = batch(size, vocab, device, kind)
    steps = itertools.count()

    def forward_backward(beta: torch.Tensor) -> None:
        with autocast(device, precision):
            loss = step_fn(ids, mask, beta, condition).loss
        loss.backward()

    def step() -> float:
        synchronize(device)
        start = time.perf_counter()
        beta = to_device(torch.tensor(min(1.0, next(steps) / 100)), device)  # a new β every step, as in training
        opt.zero_grad(set_to_none=True)
        begin_step(compile_mode)
        forward_backward(beta)
        opt.step()
        synchronize(device)
        return time.perf_counter() - start

    ops = None
    if not compile_mode:  # a compiled step's launches are its generated kernels: not counted
        beta = to_device(torch.tensor(1.0), device)
        with OpCounter() as counter:
            forward_backward(beta)
        opt.zero_grad(set_to_none=True)
        ops = counter.ops
    return step, sum(p.numel() for p in model.parameters()), ops


def paired_ratio(times: dict, name: str, base: str) -> float:
    """The median over rounds of name's step over base's in the same round."""
    return statistics.median(t / b for t, b in zip(times[name], times[base]))


def compiled_text(mode: bool | str) -> str:
    return {False: "", True: " compiled"}.get(mode, f" compiled ({mode}: CUDA graphs on CUDA)")


def compile_counts() -> tuple[int, int]:
    """(graphs Dynamo captured, graphs inductor left out of CUDA graphs) so far in this process: one
    graph per model means no recompile (β changes every step) and no graph break."""
    counters = torch._dynamo.utils.counters
    return counters["stats"]["unique_graphs"], counters["inductor"]["cudagraph_skips"]


def fresh_compile_counts() -> tuple[int, int]:
    """compile_counts() before a size's models are built, the earlier sizes' compiled frames forgotten:
    each model is another entry of the same forward's cache, and past Dynamo's recompile limit it
    would run eagerly."""
    torch._dynamo.reset()
    return compile_counts()


def print_compile_counts(before: tuple[int, int], models: int, device: torch.device) -> None:
    graphs, skips = (now - then for now, then in zip(compile_counts(), before))
    why = "TORCH_LOGS=cudagraphs says why" if device.type == "cuda" else "the CPU has none"
    print(f"  compiled: {graphs} graphs for {models} models (more: a recompile or a graph break), "
          f"{skips} left out of CUDA graphs ({why})")


def ops_text(runs: dict, name: str, base: str) -> str:
    """`ops/step N (x base r)`, or nothing for a compiled step."""
    ops, base_ops = runs[name][2], runs[base][2]
    return "" if ops is None else f"ops/step {ops:5d} (x {base} {ops / base_ops:.3f})"


def card_peak(device: torch.device, precision: str, flag: float | None) -> tuple[float | None, str]:
    """(TFLOP/s, where it came from): --peak-tflops, else the table by the card's name."""
    if flag:
        return flag, "--peak-tflops"
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    column = matmul_precision(precision, device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32)
    peak, why = peak_tflops(name, column)
    return peak, (f"{name} {column}" if peak else why)


def bench(label: str, size: Size, precision: str, steps: int, device: torch.device, args) -> dict:
    counts = fresh_compile_counts()
    runs = {name: make_step(name, size, device, precision, args.compile) for name in MODELS}
    times = {name: [] for name in MODELS}
    for _ in range(args.warmup):
        for name in MODELS:
            runs[name][0]()
    for _ in range(steps):
        for name in MODELS:
            times[name].append(runs[name][0]())
    med = {name: statistics.median(t) for name, t in times.items()}
    tokens = size.batch * size.seq
    peak, source = card_peak(device, precision, args.peak_tflops)
    print(f"\nsize ({label}) {precision}{compiled_text(args.compile)}: {size.n_layer} layers, "
          f"d={size.n_embd}, vocab {size.vocab}, batch {size.batch}, seq {size.seq}, latent {LATENT}; "
          f"median of {steps} steps; peak {f'{peak:g} TFLOP/s ({source})' if peak else f'unknown: {source}'}")
    mfu = {}
    for name in MODELS:
        flops = size.batch * train_flops_per_sequence(size.n_layer, size.n_embd, size.vocab, size.seq,
                                                      encoder=name != "gpt2")
        mfu[name] = flops / med[name] / (peak * 1e12) if peak else None
        print(f"  {name:6s} params {runs[name][1] / 1e6:8.2f} M   step {med[name] * 1e3:8.1f} ms   "
              f"x LM {paired_ratio(times, name, 'gpt2'):.3f}   {tokens / med[name]:10.0f} tokens/s   "
              f"MFU {'n/a' if mfu[name] is None else f'{mfu[name] * 100:.1f}%'}   {ops_text(runs, name, 'gpt2')}")
    floor = vae_lm_floor(size.n_layer, size.n_embd, size.vocab, size.seq)
    della_lm, della_embed = paired_ratio(times, "della", "gpt2"), paired_ratio(times, "della", "embed")
    slack, embed_target = TARGETS["cuda" if device.type == "cuda" else "cpu"]
    print(f"  FLOP floor VAE/LM = {floor:.3f}; DELLA/LM = {della_lm:.3f} ({(della_lm / floor - 1) * 100:+.1f}% "
          f"vs floor, target <= +{slack * 100:.0f}%) {'OK' if della_lm <= (1 + slack) * floor else 'MISSED'}")
    print(f"  DELLA/Embed = {della_embed:.3f} (target <= {embed_target:.2f}) "
          f"{'OK' if della_embed <= embed_target else 'MISSED'}")
    if runs["della"][2] is not None:
        ops = {name: runs[name][2] for name in MODELS}
        print(f"  ops/step (a GPU's launches): DELLA/LM = {ops['della'] / ops['gpt2']:.3f} against Embed/LM = "
              f"{ops['embed'] / ops['gpt2']:.3f}; DELLA/Embed = {ops['della'] / ops['embed']:.3f}")
    if args.compile:
        print_compile_counts(counts, len(MODELS), device)
    return {"della_ms": med["della"] * 1e3, "della_mfu": mfu["della"]}


def bench_conditional(label: str, size: Size, precision: str, steps: int, device: torch.device, args,
                      kind: str) -> None:
    """The CVAE step of the plain backbone, Embed and DELLA on `kind`, against della.flops.cvae_floor."""
    names = (kind, "embed", "della")
    counts = fresh_compile_counts()
    runs = {name: make_step(name, size, device, precision, args.compile, kind) for name in names}
    times = {name: [] for name in names}
    for i in range(args.warmup + steps):
        for name in names:
            elapsed = runs[name][0]()
            if i >= args.warmup:
                times[name].append(elapsed)
    med = {name: statistics.median(t) for name, t in times.items()}
    layers = size.n_layer // 2 if kind == "bart" else size.n_layer
    print(f"\nCVAE on {kind}, size ({label}) {precision}{compiled_text(args.compile)}: {layers} layers{' each side' if kind == 'bart' else ''}, "
          f"d={size.n_embd}, vocab {size.vocab}, batch {size.batch}, source {size.seq} + target {size.seq} "
          f"tokens, latent {LATENT}; median of {steps} steps")
    for name in names:
        print(f"  {name:6s} params {runs[name][1] / 1e6:8.2f} M   step {med[name] * 1e3:8.1f} ms   "
              f"x {kind} {paired_ratio(times, name, kind):.3f}   {ops_text(runs, name, kind)}")
    floor = cvae_floor(kind, layers, size.n_embd, size.vocab, size.seq, size.seq)
    ratio = paired_ratio(times, "della", kind)
    print(f"  FLOP floor CVAE/{kind} = {floor:.3f}; DELLA/{kind} = {ratio:.3f} "
          f"({(ratio / floor - 1) * 100:+.1f}% vs floor)")
    if args.compile:
        print_compile_counts(counts, len(names), device)


def summarise(results: dict) -> None:
    """The (c) targets of issue 11: bf16 at least 1.5x faster than fp32, DELLA's bf16 MFU >= 35%."""
    c = {precision: r for (label, precision), r in results.items() if label == "c"}
    if "fp32" in c and "bf16" in c:
        speedup = c["fp32"]["della_ms"] / c["bf16"]["della_ms"]
        verdict = "OK" if speedup >= 1.5 else "MISSED"
        print(f"\n(c) DELLA bf16 speed-up over fp32 = {speedup:.2f}x (target >= 1.5) {verdict}")
    if "bf16" in c:
        mfu = c["bf16"]["della_mfu"]
        verdict = "unknown peak" if mfu is None else ("OK" if mfu >= 0.35 else "MISSED")
        print(f"(c) DELLA bf16 MFU = {'n/a' if mfu is None else f'{mfu * 100:.1f}%'} (target >= 35%) {verdict}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="a,b", help=f"comma-separated, of {', '.join(SIZES)}")
    p.add_argument("--precisions", default="fp32", help="comma-separated, of fp32, bf16")
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--compile", nargs="?", const=True, default=False, choices=(True, "reduce-overhead"),
                   help="torch.compile each model, as train.compile: true (bare --compile) or reduce-overhead")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help=f"the card's dense peak for MFU (default: by name from {', '.join(PEAK_TFLOPS)})")
    p.add_argument("--quick", action="store_true", help="miniature shapes and 2 steps: a dry run of every path")
    p.add_argument("--task", choices=("lm", "conditional"), default="lm",
                   help="conditional: the CVAEs of Tables 2 and 9 (plain backbone, Embed, DELLA)")
    p.add_argument("--backbones", default="gpt2,bart", help="--task conditional: comma-separated, of gpt2, bart")
    args = p.parse_args()
    if args.quick:
        args.steps, args.warmup = 2, 1
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    kept = host_memory.apply(TrainConfig().reuse_host_memory, device)  # as training does
    print(f"torch {torch.__version__}, {device_text({'device': describe_device(device)})}, freed host memory "
          f"{'kept' if kept else 'released'} (train.reuse_host_memory: auto; benchmarks/host_memory.py compares)"
          f"{', QUICK: miniature shapes, numbers meaningless' if args.quick else ''}")
    results = {}
    for label in args.sizes.split(","):
        for precision in args.precisions.split(","):
            size = QUICK if args.quick else SIZES[label]
            if args.task == "conditional":
                for kind in args.backbones.split(","):
                    bench_conditional(label, size, precision, args.steps, device, args, kind)
            else:
                results[label, precision] = bench(label, size, precision, args.steps, device, args)
    summarise(results)


if __name__ == "__main__":
    main()
