"""IW-PPL cost: one encoder pass per sentence and K batched decoder passes, against the official
code's way (K full encoder + decoder passes, one sample at a time). Both give the same estimator;
the script prints the time of each and their ratio, measured in one run.

    python benchmarks/iw_cost.py [--k 30] [--batch 32] [--threads 2] [--device cuda]
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from della.config import BackboneConfig
from della.cost import device_text
from della.estimators import iw_batch, iw_rows
from della.flops import vae_lm_floor
from della.models.base import Vocab, build_model
from della.provenance import describe_device
from della.train import synchronize


def naive_iw(model, ids, mask, k: int) -> torch.Tensor:
    """K rounds of encode -> sample -> decode, as the official `calc_iwnll` loops."""
    log_w = []
    for _ in range(k):
        post = model.sample_posterior(model.encode(ids, mask), 1)
        nll = model.token_nll(ids, mask, post.z[0])
        log_w.append(-nll + post.log_p[0].sum(-1) - post.log_q[0].sum(-1))
    return torch.logsumexp(torch.stack(log_w), 0) - math.log(k)


def timed(fn, device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--k", type=int, default=30)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    vocab = Vocab(size=8000, bos_id=1, eos_id=2, pad_id=0)
    cfg = BackboneConfig(n_layer=4, n_embd=256, n_head=4, n_positions=64, dropout=0.0)
    device = torch.device(args.device)
    model = build_model("della", {}, vocab, backbone_config=cfg).eval().to(device)
    ids = torch.randint(3, vocab.size, (args.batch, 32), device=device)
    ids[:, 0] = vocab.bos_id
    mask = torch.ones_like(ids, dtype=torch.float)
    rows = iw_rows("auto", device, ids.shape[1], vocab.size, cfg.n_embd)  # as `evaluate` sizes its passes
    with torch.no_grad():
        iw_batch(model, ids, mask, 2, max_rows=rows), naive_iw(model, ids, mask, 2)  # warm-up
        batched = timed(lambda: iw_batch(model, ids, mask, args.k, max_rows=rows), device)
        naive = timed(lambda: naive_iw(model, ids, mask, args.k), device)
    print(f"DELLA 4x256, vocab 8000, batch {args.batch}, seq 32, K={args.k}, on {device_text({'device': describe_device(device)})}")
    print(f"  batched (1 encoder pass, K decoder passes batched): {batched:6.2f} s")
    print(f"  naive   (K encoder + K decoder passes):            {naive:6.2f} s")
    ideal = vae_lm_floor(4, 256, vocab.size, 32)  # (encoder + decoder) / decoder, from FLOPs
    print(f"  speed-up: {naive / batched:.2f}x (ideal from FLOPs, all K-1 encoder passes saved: {ideal:.2f}x)")


if __name__ == "__main__":
    main()
