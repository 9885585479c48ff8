"""Train-step time (forward, backward, AdamW step) of DELLA vs Embed-VAE vs the plain LM.

Two sizes: (a) 4 layers, d=256, vocab 8000, batch 32; (b) 12 layers, d=768, vocab 50257, batch 8;
sequence length 32, latent 32. Models are timed round-robin in one process (so drift hits all
alike) and the median step is reported. The FLOP floor of a VAE step is one encoder pass without
the LM head plus one decoder pass: VAE/LM >= 1 + body / (body + head).

    python benchmarks/train_speed.py [--sizes a,b] [--steps 12] [--threads 2] [--device cuda]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from della.config import BackboneConfig
from della.models import Vocab, build_model

SIZES = {
    "a": dict(n_layer=4, n_embd=256, n_head=4, vocab=8000, batch=32),
    "b": dict(n_layer=12, n_embd=768, n_head=12, vocab=50257, batch=8),
}
SEQ, LATENT = 32, 32
MODELS = ("gpt2", "embed", "della")


def flop_floor(n_layer: int, d: int, vocab: int, seq: int) -> float:
    """Forward FLOPs per token: body = layers x (24 d^2 + 4 T d), head = 2 d V."""
    body = n_layer * (24 * d * d + 4 * seq * d)
    head = 2 * d * vocab
    return 1 + body / (body + head)


def make_step(name: str, size: dict, device: torch.device):
    torch.manual_seed(0)
    vocab = Vocab(size=size["vocab"], bos_id=1, eos_id=2, pad_id=0)
    backbone = BackboneConfig(n_layer=size["n_layer"], n_embd=size["n_embd"], n_head=size["n_head"],
                              n_positions=64, dropout=0.1)
    args = {} if name == "gpt2" else {"latent_size": LATENT}
    model = build_model(name, args, vocab, backbone_config=backbone).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(3, size["vocab"], (size["batch"], SEQ), device=device)
    ids[:, 0] = vocab.bos_id
    mask = torch.ones(size["batch"], SEQ, device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def step() -> float:
        sync()
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        model.loss(ids, mask, beta=1.0).loss.backward()
        opt.step()
        sync()
        return time.perf_counter() - start

    return step, sum(p.numel() for p in model.parameters())


def bench(size_name: str, steps: int, device: torch.device, warmup: int = 2) -> None:
    size = SIZES[size_name]
    runs = {name: make_step(name, size, device) for name in MODELS}
    times = {name: [] for name in MODELS}
    for _ in range(warmup):
        for name in MODELS:
            runs[name][0]()
    for _ in range(steps):
        for name in MODELS:
            times[name].append(runs[name][0]())
    med = {name: statistics.median(t) for name, t in times.items()}
    floor = flop_floor(size["n_layer"], size["n_embd"], size["vocab"], SEQ)
    print(f"\nsize ({size_name}): {size['n_layer']} layers, d={size['n_embd']}, vocab {size['vocab']}, "
          f"batch {size['batch']}, seq {SEQ}, latent {LATENT}; median of {steps} steps")
    for name in MODELS:
        print(f"  {name:6s} params {runs[name][1] / 1e6:8.2f} M   step {med[name] * 1e3:8.1f} ms   "
              f"x LM {med[name] / med['gpt2']:.3f}")
    della_embed = med["della"] / med["embed"]
    della_lm = med["della"] / med["gpt2"]
    print(f"  FLOP floor VAE/LM = {floor:.3f}; DELLA/LM = {della_lm:.3f} ({(della_lm / floor - 1) * 100:+.1f}% "
          f"vs floor, target <= +5%) {'OK' if della_lm <= 1.05 * floor else 'MISSED'}")
    print(f"  DELLA/Embed = {della_embed:.3f} (target <= 1.10) {'OK' if della_embed <= 1.10 else 'MISSED'}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="a,b")
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, {device}, {args.threads} threads")
    for s in args.sizes.split(","):
        bench(s, args.steps, device)


if __name__ == "__main__":
    main()
