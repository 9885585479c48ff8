"""Train-step time of the LM, Embed-VAE and DELLA with glibc's default allocator settings (freed big
blocks handed back to the kernel) against `train.reuse_host_memory` (kept for reuse), in one process:
blocks of steps alternate between the two settings, the models round-robin inside each block, and the
first round of a block is left out (the heap fills, or hands its pages back). Per model and setting: the
median step (a ratio between models is the median of each round's, as in train_speed.py), the minor page
faults and kernel (system) CPU time per step (the cost it removes), and the process's resident memory
after a step (the cost it adds: freed blocks stay mapped).

    python benchmarks/host_memory.py [--sizes b] [--blocks 3] [--steps 3] [--threads 2] [--quick]

--quick: train_speed's miniature shapes, one block of one step: a dry run; its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics

import torch

from della import host_memory
from della.cost import device_text
from della.flops import vae_lm_floor
from della.provenance import describe_device
from train_speed import MODELS, QUICK, SIZES, make_step, paired_ratio

SETTINGS = {False: "released", True: "kept"}


def resident_gb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e9


def timed(step) -> tuple[float, int, float, float]:
    """(seconds, minor page faults, system CPU seconds) of one step, and the resident GB after it."""
    before = resource.getrusage(resource.RUSAGE_SELF)
    seconds = step()
    after = resource.getrusage(resource.RUSAGE_SELF)
    return seconds, after.ru_minflt - before.ru_minflt, after.ru_stime - before.ru_stime, resident_gb()


def bench(label: str, size, blocks: int, steps: int) -> None:
    cpu = torch.device("cpu")
    runs = {name: make_step(name, size, cpu, "fp32", False)[0] for name in MODELS}
    samples = {(name, keep): [] for name in MODELS for keep in SETTINGS}
    for _ in range(blocks):
        for keep in SETTINGS:
            host_memory.keep_freed_memory(keep)
            for round_ in range(steps + 1):
                for name, step in runs.items():
                    sample = timed(step)
                    if round_ > 0:
                        samples[name, keep].append(sample)
    print(f"\nsize ({label}): {size.n_layer} layers, d={size.n_embd}, vocab {size.vocab}, batch {size.batch}, "
          f"seq {size.seq}; median of {blocks * steps} steps per setting ({blocks} blocks of {steps})")
    median = {}
    for (name, keep), rows in samples.items():
        median[name, keep] = [statistics.median(column) for column in zip(*rows)]
    for name in MODELS:
        cells = "   ".join(f"{SETTINGS[keep]:8s} {median[name, keep][0] * 1e3:7.1f} ms "
                           f"{median[name, keep][1]:7.0f} faults {median[name, keep][2] * 1e3:4.0f} ms sys "
                           f"{median[name, keep][3]:5.2f} GB" for keep in SETTINGS)
        print(f"  {name:6s} {cells}   speed-up x{median[name, False][0] / median[name, True][0]:.2f}")
    floor = vae_lm_floor(size.n_layer, size.n_embd, size.vocab, size.seq)
    per_setting = []
    for keep in SETTINGS:
        times = {name: [sample[0] for sample in samples[name, keep]] for name in MODELS}
        per_setting.append(f"{SETTINGS[keep]} {paired_ratio(times, 'della', 'gpt2'):.3f}, "
                           f"DELLA/Embed {paired_ratio(times, 'della', 'embed'):.3f}")
    print(f"  DELLA/LM (FLOP floor {floor:.3f}): {'; '.join(per_setting)}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="b", help=f"comma-separated, of {', '.join(SIZES)}")
    p.add_argument("--blocks", type=int, default=3, help="blocks per setting, alternating")
    p.add_argument("--steps", type=int, default=3, help="timed rounds per block (after one left out)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="miniature shapes, one block of one step: a dry run")
    args = p.parse_args()
    if not host_memory.available():
        raise SystemExit("train.reuse_host_memory needs glibc (Linux): nothing to compare here")
    if args.quick:
        args.blocks, args.steps = 1, 1
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {device_text({'device': describe_device(torch.device('cpu'))})}"
          f"{', QUICK: miniature shapes, numbers meaningless' if args.quick else ''}")
    for label in args.sizes.split(","):
        bench(label, QUICK if args.quick else SIZES[label], args.blocks, args.steps)


if __name__ == "__main__":
    main()
