"""The training cost of a run as metric entries shaped like those of eval.json.

The numbers come from two files:

- `run.json`, written by `della train`: the parameter count, the seconds spent in training steps
  (no validation, start-up or checkpoints; summed over resumes) and the device hours they took (times
  the processes: the paper's Table 6 counts GPU hours), tokens/s over that loop, the peak memory of the training process
  (host RSS; GPU memory allocated by torch when it ran on CUDA), the device and the model FLOPs
  utilisation (`cost.mfu`: della.flops' count over the card's dense peak, its signature naming the
  precision and the peak; null with the reason where the peak is unknown, e.g. on a CPU).
- the Snakemake `benchmark:` record of the job, `results/benchmarks/{rule}/{dataset}/{model}/seed{seed}.jsonl`:
  the wall seconds (`s`) and peak RSS (`max_rss`, MB) of the whole job (start-up, validation and
  checkpoints included; the last attempt only when a job was resumed).

The label, direction and display settings of each number are declared here, once, in COST_METRICS
(the parameter count has no direction: fewer parameters are not "better").
`python -m della aggregate` copies them into the long CSV, where the tables read them. The device
is a text entry (`{"text": ..., "label": "Device"}`): it has no value and no direction.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from della.io import read_jsonl
from della.metric_spec import MetricSpec


# key -> how it is shown; `{rule}_...` keys come from the benchmark record of that rule's job.
COST_METRICS: dict[str, MetricSpec] = {
    "train_wall_seconds": MetricSpec("Wall (s)", False, 1, signature="Snakemake benchmark s of the train job"),
    "train_seconds": MetricSpec("Train loop (s)", False, 1, signature="training steps only, summed over resumes"),
    # the paper's Table 6 ("GPU hours of training DELLA"), for every model
    "device_hours": MetricSpec("Device hours", False, 2, signature="train loop s x processes / 3600"),
    "tokens_per_second": MetricSpec("Tokens/s", True, 0, signature="predicted tokens / train loop seconds"),
    "mfu": MetricSpec("MFU (%)", True, 1, display_scale=100,
                      signature="della.flops model FLOPs x tokens/s / (dense peak x processes)"),
    "train_max_rss_mb": MetricSpec("Peak RSS (MB)", False, 0,
                                   signature="Snakemake benchmark max_rss of the train job"),
    "max_rss_mb": MetricSpec("Process RSS (MB)", False, 0, signature="ru_maxrss of the training process"),
    "cuda_max_allocated_mb": MetricSpec("Peak GPU (MB)", False, 0, signature="torch.cuda.max_memory_allocated"),
    # a size, not a score: no direction, so no arrow and no bold "best"
    "parameters": MetricSpec("Params (M)", None, 2, display_scale=1e-6),
}
# benchmark record field -> metric key suffix (prefixed with the rule's name)
BENCHMARK_FIELDS = {"s": "wall_seconds", "max_rss": "max_rss_mb"}


def device_text(provenance: dict[str, Any]) -> str:
    """E.g. "cpu (AMD EPYC, AVX512, 1 thread)", "NVIDIA H100 80GB HBM3", "4 × NVIDIA A100-SXM4-80GB"."""
    device = provenance.get("device") or {}
    if device.get("type") == "cuda":
        text = device.get("name") or "cuda"
    else:
        threads = device.get("torch_threads")
        details = [device.get("cpu") or device.get("machine"), device.get("cpu_capability"),
                   f"{threads} thread{'' if threads == 1 else 's'}" if isinstance(threads, int) else None]
        details = [str(d) for d in details if d]
        text = device.get("type", "unknown") + (f" ({', '.join(details)})" if details else "")
    world = provenance.get("world_size") or 1
    return f"{world} × {text}" if world > 1 else text


def process_provenances(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The provenance of each process that trained a run.json's model (run.json `processes`; a resumed
    run may have moved machine or commit), oldest first; {} for one whose checkpoint did not record it."""
    processes = doc.get("processes") or [{"provenance": doc.get("provenance")}]
    return [p.get("provenance") or {} for p in processes]


ACROSS_PROCESSES = " → "  # joins what differs between the processes of one run


def over_processes(doc: dict[str, Any], describe) -> str:
    """What `describe` says of each process's provenance, once per distinct answer: "A", or "A → B"."""
    return ACROSS_PROCESSES.join(dict.fromkeys(str(describe(p)) for p in process_provenances(doc)))


def mfu_signature(doc: dict[str, Any]) -> str:
    """What the MFU was measured against: the matmul precision (run.json `speed`) and the peak."""
    speed, cost = doc.get("speed") or {}, doc.get("cost") or {}
    return (f"{COST_METRICS['mfu'].signature}|precision={speed.get('precision', 'fp32')}"
            f"|matmul={speed.get('matmul', 'fp32')}|peak={cost.get('peak_tflops')} TFLOP/s")


def run_metrics(doc: dict[str, Any], where: str = "run.json") -> dict[str, dict[str, Any]]:
    """Cost entries from a run.json document (`kind: run`)."""
    cost, prov = doc.get("cost"), doc.get("provenance")
    if not isinstance(cost, dict) or not isinstance(prov, dict):
        raise ValueError(f"{where}: expected 'cost' and 'provenance' objects (a run.json of `della train`)")
    on_gpu = (prov.get("device") or {}).get("type") == "cuda"
    out = {key: COST_METRICS[key].entry(cost.get(key)) for key in ("train_seconds", "tokens_per_second", "max_rss_mb")}
    out["cuda_max_allocated_mb"] = COST_METRICS["cuda_max_allocated_mb"].entry(
        cost.get("cuda_max_allocated_mb"), "" if on_gpu else "not trained on a GPU")
    out["mfu"] = COST_METRICS["mfu"].entry(cost.get("mfu"), cost.get("mfu_note") or "run.json has no cost.mfu",
                                           signature=mfu_signature(doc))
    seconds = cost.get("train_seconds")
    out["device_hours"] = COST_METRICS["device_hours"].entry(
        None if seconds is None else seconds * (prov.get("world_size") or 1) / 3600, "run.json has no train_seconds")
    out["parameters"] = COST_METRICS["parameters"].entry(doc.get("parameters"))
    out["device"] = {"text": over_processes(doc, device_text), "label": "Device"}
    return out


def benchmark_metrics(path: Path, rule: str) -> dict[str, dict[str, Any]]:
    """Cost entries from a Snakemake benchmark JSONL file: the mean over its records (one per repeat)."""
    records = read_jsonl(path)
    if not records:
        raise ValueError(f"{path}: no benchmark record")
    out = {}
    for field, suffix in BENCHMARK_FIELDS.items():
        key = f"{rule}_{suffix}"
        if key not in COST_METRICS:
            raise ValueError(f"{path}: no cost metric {key!r} is declared for rule {rule!r} "
                             f"(known: {sorted(COST_METRICS)})")
        values = [r.get(field) for r in records]
        numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
        out[key] = COST_METRICS[key].entry(sum(numbers) / len(numbers) if len(numbers) == len(values) else None,
                                           f"benchmark field {field!r} is not a number in every record")
    return out
