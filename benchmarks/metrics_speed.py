"""Speed of the metrics package against the straightforward NLTK loop, measured in one run.

1. Multi-reference BLEU, 1k PTB samples x 10k PTB references: metrics.bleu (exact, no loop over
   references) against `nltk.sentence_bleu(all_refs, hyp)` per sample. The NLTK loop is timed on a
   subset and extrapolated; the values of that subset must be identical.
2. Self-BLEU over 2k samples, the same way.
3. The full metric set (all 8 registry entries) on 10k samples / 10k references through
   `python -m metrics compute --task conditional` (the pair metrics need it; only the timing
   matters here): wall time, time per metric and peak memory (max RSS).

Usage: python benchmarks/metrics_speed.py [--nltk-subset 10] [--full-samples 10000] [--skip-full]
Needs ../shared/data/ptb and nltk (the test extra).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

from metrics import registry
from metrics.bleu import fast_self_bleu, fast_sentence_bleu

PTB = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "ptb"
ORDER = 4
WEIGHTS = (1 / ORDER,) * ORDER


def ptb_lines(split: str) -> list[str]:
    path = PTB / f"{split}.txt"
    if not path.is_file():
        sys.exit(f"benchmark needs the PTB text at {path}")
    return [line.strip() for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]


def timed(fn, *args):
    start = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - start


def compare(title: str, fast_fn, nltk_one, hyps: list, subset: int) -> None:
    """Time fast_fn on all hyps and nltk_one(i) on the first `subset`, extrapolated."""
    fast, fast_seconds = timed(fast_fn)
    method1 = SmoothingFunction().method1
    start = time.perf_counter()
    slow = [nltk_one(i, method1) for i in range(subset)]
    per_hyp = (time.perf_counter() - start) / subset
    nltk_seconds = per_hyp * len(hyps)
    diff = max(abs(a - b) for a, b in zip(fast[:subset], slow))
    print(f"{title}")
    print(f"  fast (metrics.bleu):   {fast_seconds:8.2f} s for {len(hyps)} samples "
          f"(mean score {fast.mean():.6f})")
    print(f"  NLTK loop:             {nltk_seconds:8.1f} s extrapolated from {subset} samples "
          f"({per_hyp:.3f} s each)")
    print(f"  max |fast - NLTK| on those {subset}: {diff:.3g}   "
          f"{'identical' if diff == 0 else 'DIFFERENT'}")
    print(f"  speed-up: {nltk_seconds / fast_seconds:,.0f}x")


def full_metric_set(n: int) -> None:
    train = ptb_lines("train")
    if len(train) < 2 * n:
        sys.exit(f"need {2 * n} PTB train lines, have {len(train)}")
    with tempfile.TemporaryDirectory() as tmp:
        samples, refs, out = Path(tmp, "samples.txt"), Path(tmp, "refs.txt"), Path(tmp, "m.json")
        samples.write_text("\n".join(train[:n]) + "\n", encoding="utf-8")
        refs.write_text("\n".join(train[n:2 * n]) + "\n", encoding="utf-8")
        names = "bleu,self_bleu,dist,js,cnd,mauve,rouge,bertscore"
        start = time.perf_counter()
        run = subprocess.run([sys.executable, "-m", "metrics", "compute", "--samples", str(samples),
                              "--references", str(refs), "--metrics", names, "--out", str(out),
                              "--task", "conditional"],
                             capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if run.returncode != 0:
            sys.exit(f"metrics compute failed:\n{run.stderr[-3000:]}")
        doc = json.loads(out.read_text())
    peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"Full metric set, {n} samples / {n} references (PTB train halves, timed as a conditional "
          "task: line i is the target of sample i), one `python -m metrics compute` process")
    timed_metrics = set()
    for key, entry in doc["metrics"].items():
        value = "null" if entry["value"] is None else f"{entry['value'] * entry['display_scale']:.2f}"
        metric = registry.get(key).metric
        timing = "" if metric in timed_metrics else f"{doc['seconds'][metric]:7.1f} s ({metric})"
        timed_metrics.add(metric)
        print(f"  {entry['label']:10s} {value:>7s}  {timing}")
    print(f"  total wall time: {seconds:.1f} s (including imports and model loading)")
    print(f"  peak memory (max RSS of the process): {peak_mib:.0f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nltk-subset", type=int, default=10, help="samples timed with NLTK")
    parser.add_argument("--full-samples", type=int, default=10000)
    parser.add_argument("--skip-full", action="store_true")
    args = parser.parse_args()

    train, valid = ptb_lines("train"), ptb_lines("valid")
    hyps = [line.split() for line in valid[:1000]]
    refs = [line.split() for line in train[:10000]]
    compare(f"BLEU-{ORDER}, {len(hyps)} samples x {len(refs)} references (PTB valid vs train)",
            lambda: fast_sentence_bleu(hyps, refs, ORDER),
            lambda i, sm: sentence_bleu(refs, hyps[i], WEIGHTS, sm), hyps, args.nltk_subset)
    pool = [line.split() for line in train[10000:12000]]
    compare(f"Self-BLEU-{ORDER}, {len(pool)} samples (PTB train)",
            lambda: fast_self_bleu(pool, ORDER),
            lambda i, sm: sentence_bleu(pool[:i] + pool[i + 1:], pool[i], WEIGHTS, sm),
            pool, 2 * args.nltk_subset)
    if not args.skip_full:
        full_metric_set(args.full_samples)


if __name__ == "__main__":
    main()
