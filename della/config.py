"""Run configuration: one frozen dataclass per section, built from validated YAML.

A run is (dataset, model, seed). `resolve_run_config` turns the workflow config
(config/config.yaml, validated by workflow/schemas/config.schema.yaml) into the
self-contained run config that `python -m della train --config run.yaml` reads.
This module imports no torch, so the Snakefile can use it at parse time.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A config key is unknown or has a bad value; the message names the key."""


@dataclass(frozen=True)
class BackboneConfig:
    pretrained: str | None = None  # HF name or local dir of a GPT-2 checkpoint; None: from scratch
    n_layer: int = 2
    n_embd: int = 64
    n_head: int = 2
    n_positions: int = 128
    dropout: float = 0.1


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 4
    batch_size: int = 32
    grad_accum: int = 1
    lr: float = 5e-4
    adam_eps: float = 1e-6  # the official code's effective eps (reference §4)
    weight_decay: float = 0.0
    grad_clip: float | None = None
    beta_schedule: str = "cyclical"  # cyclical (official code, reference §4) | constant
    beta: float = 1.0  # constant β, and the top of the cyclical ramp
    beta_0: float = 1e-5  # cyclical zero-phase value
    cycle_epochs: int = 2  # cyclical period C in epochs (C >= 2)
    max_length: int = 64  # tokens including <s> and </s>; longer lines are truncated and counted
    max_train_lines: int | None = None
    threads: int = 1  # torch intra-op threads; fixed so runs are reproducible across executors
    device: str = "auto"  # auto | cpu | cuda
    log_every: int = 1  # optimizer steps between JSONL log lines


@dataclass(frozen=True)
class EvalConfig:
    iw_samples: int = 30
    batch_size: int = 32
    mi_batch_size: int | None = None  # None: whole evaluation set is the aggregate posterior (M = N)
    max_lines: int | None = None


@dataclass(frozen=True)
class GenerateConfig:
    n_samples: int = 200
    strategy: str = "sample"  # sample | greedy | beam
    top_k: int = 0
    top_p: float = 0.9
    temperature: float = 1.0
    num_beams: int = 10
    repetition_penalty: float = 1.0
    max_new_tokens: int = 40
    min_new_tokens: int = 3  # </s> is blocked before this many tokens (the code: prompt + 3)
    batch_size: int = 50


@dataclass(frozen=True)
class RunConfig:
    dataset: str
    data_dir: str
    tokenizer_dir: str
    model: str  # registry name in della.models
    model_args: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    backbone: BackboneConfig = BackboneConfig()
    train: TrainConfig = TrainConfig()
    evaluate: EvalConfig = EvalConfig()
    generate: GenerateConfig = GenerateConfig()

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "run config") -> "RunConfig":
        sections = {"backbone": BackboneConfig, "train": TrainConfig,
                    "evaluate": EvalConfig, "generate": GenerateConfig}
        kwargs = _check_keys(cls, d, where)
        for name, section_cls in sections.items():
            if name in kwargs:
                kwargs[name] = section_cls(**_check_keys(section_cls, kwargs[name] or {}, f"{where}: {name}"))
        return cls(**kwargs)

    @classmethod
    def load(cls, path: str | Path) -> "RunConfig":
        path = Path(path)
        try:
            d = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as err:
            raise ConfigError(f"{path}: cannot read run config: {err}") from err
        if not isinstance(d, dict):
            raise ConfigError(f"{path}: a run config must be a mapping")
        return cls.from_dict(d, where=str(path))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def dump(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def _check_keys(cls, d: dict[str, Any], where: str) -> dict[str, Any]:
    if not isinstance(d, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(d).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; valid keys: {sorted(known)}")
    return dict(d)


def resolve_run_config(workflow_config: dict[str, Any], dataset: str, model: str, seed: int,
                       results: str = "results") -> dict[str, Any]:
    """The run config of (dataset, model, seed) as a plain dict (deterministic, JSON-able).

    Sections `backbone`, `train`, `evaluate`, `generate` are the workflow defaults, overridden by the
    dataset's and then the model's entries of the same name. `models[model].model` is the registry
    name (several entries may share one, e.g. `della` and `della-official`).
    """
    try:
        ds = workflow_config["datasets"][dataset]
        m = workflow_config["models"][model]
    except KeyError as err:
        raise ConfigError(f"workflow config: no dataset/model entry {err}") from err
    run: dict[str, Any] = {
        "dataset": dataset,
        "data_dir": f"{results}/data/{dataset}",
        "tokenizer_dir": f"{results}/tokenizers/{dataset}",
        "model": m.get("model", model),
        "model_args": dict(m.get("args", {})),
        "seed": int(seed),
    }
    for section in ("backbone", "train", "evaluate", "generate"):
        merged = dict(workflow_config.get(section, {}))
        merged.update(ds.get(section, {}))
        merged.update(m.get(section, {}))
        run[section] = merged
    RunConfig.from_dict(run, where=f"workflow config ({dataset}/{model})")  # fail at DAG build
    return json.loads(json.dumps(run))
