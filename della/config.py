"""Run configuration: one frozen dataclass per section, built from validated YAML.

A run is (dataset, model, seed). `resolve_run_config` turns the workflow config
(config/config.yaml, validated by workflow/schemas/config.schema.yaml) into the
self-contained run config that `python -m della train --config run.yaml` reads.
This module imports no torch, so the Snakefile can use it at parse time; resolving a workflow config
checks each model's `args` against its config dataclass in the model registry (torch-free too).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from della.models import BACKBONE_KINDS, MODELS, check_model_name, runs_on


class ConfigError(ValueError):
    """A config key is unknown or has a bad value; the message names the key."""


RESUME_MODES = ("auto", "never", "weights-only")
# Keys that cannot change the trained weights, so changing them never retrains: `epochs` only bounds
# the loop (a checkpoint after fewer epochs is resumed exactly), `log_every` only thins the log and
# `resume` only says what to reuse. Validation (evaluate.*) draws from its own seeded stream.
# `fused_adam`, `compile`, `pad_to_multiple` and `reuse_host_memory` are speed switches: the same maths, equal
# to float rounding (tests/test_speed_switches.py), except that more pads enter the official DELLA's
# unmasked pooling: there `pad_to_multiple` is in the recipe (RunConfig.training_recipe).
NOT_IN_RECIPE = {"epochs", "log_every", "resume", "fused_adam", "compile", "pad_to_multiple", "reuse_host_memory"}
PRECISIONS = ("fp32", "bf16")
TASKS = ("lm", "conditional")  # a language model of sentences | source -> target (a CVAE)
CONDITIONAL_SOURCES = ("jsonl", "hf-conditional", "synthetic-conditional")  # dataset sources of a conditional task


def check_number(where: str, value: Any, low: float, *, integer: bool = False, above: bool = False,
                 high: float | None = None, optional: bool = False) -> None:
    """A ConfigError naming `where` unless `value` is a number (an integer) >= low (> low with
    `above`) and <= high, or None when `optional`: a hand-written run config gets the workflow schema's
    bounds (tests/test_reliability.py checks the two agree)."""
    if optional and value is None:
        return
    number = not isinstance(value, bool) and isinstance(value, int if integer else (int, float))
    if number and (value > low if above else value >= low) and (high is None or value <= high):
        return
    valid = f"{'an integer' if integer else 'a number'} {'>' if above else '>='} {low:g}"
    valid += (f" and <= {high:g}" if high is not None else "") + (" or null" if optional else "")
    raise ConfigError(f"{where} = {value!r}; valid: {valid}")


def check_numbers(section: str, config: Any, bounds: dict[str, dict[str, Any]]) -> None:
    for key, bound in bounds.items():
        check_number(f"{section}.{key}", getattr(config, key), **bound)


COUNT, POSITIVE = dict(low=1, integer=True), dict(low=0, above=True)  # the common bounds
BACKBONE_BOUNDS = {"n_layer": COUNT, "n_embd": COUNT, "n_head": COUNT, "n_positions": COUNT,
                   "dropout": dict(low=0, high=1)}
TRAIN_BOUNDS = {"epochs": COUNT, "batch_size": COUNT, "grad_accum": COUNT, "lr": POSITIVE, "adam_eps": POSITIVE,
                "weight_decay": dict(low=0), "grad_clip": {**POSITIVE, "optional": True}, "beta": dict(low=0),
                "beta_0": dict(low=0), "cycle_epochs": dict(low=2, integer=True), "warmup_epochs": POSITIVE,
                "max_length": dict(low=3, integer=True), "max_train_lines": {**COUNT, "optional": True},
                "threads": COUNT, "log_every": COUNT}
EVAL_BOUNDS = {"iw_samples": COUNT, "batch_size": COUNT, "mi_batch_size": {**COUNT, "optional": True},
               "max_lines": {**COUNT, "optional": True}}
GENERATE_BOUNDS = {"n_samples": COUNT, "top_k": dict(low=0, integer=True), "top_p": {**POSITIVE, "high": 1},
                   "temperature": POSITIVE, "num_beams": COUNT, "repetition_penalty": POSITIVE,
                   "max_new_tokens": COUNT, "min_new_tokens": dict(low=0, integer=True), "batch_size": COUNT}


@dataclass(frozen=True)
class BackboneConfig:
    kind: str = "gpt2"  # gpt2 (decoder only) | bart (encoder-decoder, conditional tasks)
    pretrained: str | None = None  # HF name or local dir of a checkpoint of that kind; None: from scratch
    n_layer: int = 2
    n_embd: int = 64
    n_head: int = 2
    n_positions: int = 128
    dropout: float = 0.1

    def __post_init__(self):
        if self.kind not in BACKBONE_KINDS:
            raise ConfigError(f"backbone.kind = {self.kind!r}; valid: {list(BACKBONE_KINDS)}")
        check_numbers("backbone", self, BACKBONE_BOUNDS)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 4
    batch_size: int = 32
    grad_accum: int = 1
    lr: float = 5e-4
    adam_eps: float = 1e-6  # the official code's effective eps (reference §4)
    weight_decay: float = 0.0
    grad_clip: float | None = None
    beta_schedule: str = "cyclical"  # cyclical (official code, reference §4) | monotonic | constant
    beta: float = 1.0  # constant β, and the top of the cyclical ramp
    beta_0: float = 1e-5  # cyclical zero-phase value
    cycle_epochs: int = 2  # cyclical period C in epochs (C >= 2)
    warmup_epochs: float = 1.0  # monotonic: epochs of the linear ramp from beta_0 to beta
    max_length: int = 64  # tokens including <s> and </s>; longer lines are truncated and counted
    max_train_lines: int | None = None
    threads: int = 1  # torch intra-op threads; fixed so runs are reproducible across executors
    device: str = "auto"  # auto | cpu | cuda
    log_every: int = 1  # optimizer steps between JSONL log lines
    resume: str = "auto"  # auto | never | weights-only: what a rerun takes from checkpoint/ (README "Resuming")
    precision: str = "fp32"  # fp32 | bf16: autocast of the forward; z, densities, KL and log-sum-exp stay fp32
    fused_adam: bool | str = "auto"  # auto: the fused AdamW kernel on CUDA and the CPU, the plain one elsewhere
    compile: bool | str = False  # torch.compile the trained model; reduce-overhead: + CUDA graphs (on CUDA)
    pad_to_multiple: int = 1  # training batches' lengths padded up to a multiple: fewer shapes to compile
    reuse_host_memory: bool | str = "auto"  # auto: keep freed CPU memory for reuse on a CPU run (della.host_memory)

    def __post_init__(self):
        check_numbers("train", self, TRAIN_BOUNDS)
        if self.resume not in RESUME_MODES:
            raise ConfigError(f"train.resume = {self.resume!r}; valid: {list(RESUME_MODES)}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"train.precision = {self.precision!r}; valid: {list(PRECISIONS)}")
        if self.fused_adam not in ("auto", True, False):
            raise ConfigError(f"train.fused_adam = {self.fused_adam!r}; valid: auto, true, false")
        if self.reuse_host_memory not in ("auto", True, False):
            raise ConfigError(f"train.reuse_host_memory = {self.reuse_host_memory!r}; valid: auto, true, false")
        if not (isinstance(self.compile, bool) or self.compile == "reduce-overhead"):
            raise ConfigError(f"train.compile = {self.compile!r}; valid: false, true, reduce-overhead")
        if isinstance(self.pad_to_multiple, bool) or not isinstance(self.pad_to_multiple, int) \
                or self.pad_to_multiple < 1:
            raise ConfigError(f"train.pad_to_multiple = {self.pad_to_multiple!r}; valid: an integer >= 1")


@dataclass(frozen=True)
class EvalConfig:
    iw_samples: int = 30
    batch_size: int = 32
    mi_batch_size: int | None = None  # None: whole evaluation set is the aggregate posterior (M = N)
    max_lines: int | None = None
    iw_rows: int | str = "auto"  # sequences per IW decoder pass; auto: 128 on the CPU, what fits on CUDA

    def __post_init__(self):
        check_numbers("evaluate", self, EVAL_BOUNDS)
        if self.iw_rows != "auto" and (isinstance(self.iw_rows, bool) or not isinstance(self.iw_rows, int)
                                       or self.iw_rows < 1):
            raise ConfigError(f"evaluate.iw_rows = {self.iw_rows!r}; valid: auto or an integer >= 1")


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

    def __post_init__(self):
        check_numbers("generate", self, GENERATE_BOUNDS)


@dataclass(frozen=True)
class RunConfig:
    dataset: str
    data_dir: str
    tokenizer_dir: str
    model: str  # registry name in della.models
    model_args: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    task: str = "lm"  # lm: {split}.txt sentences | conditional: {split}.jsonl source/target pairs
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
        if kwargs.get("task", "lm") not in TASKS:
            raise ConfigError(f"{where}: task = {kwargs['task']!r}; valid: {list(TASKS)}")
        return cls(**kwargs)

    @classmethod
    def load(cls, path: str | Path) -> "RunConfig":
        return cls.from_dict(read_yaml_mapping(path, "run config"), where=str(path))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def dump(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def training_recipe(self) -> dict[str, Any]:
        """The config keys that determine the trained weights (the fingerprint adds file checksums):
        every field of the model's config, defaults included, so that a changed default in the code
        changes the recipe too; `pad_to_multiple` too for a model whose numbers read the pads."""
        model_config = MODELS.get(self.model).make_config(self.model_args, f"model_args of {self.model!r}")
        reads_pads = getattr(model_config, "reads_pads", False)  # only DellaConfig has pads to read
        left_out = NOT_IN_RECIPE - ({"pad_to_multiple"} if reads_pads else set())
        train = {k: v for k, v in dataclasses.asdict(self.train).items() if k not in left_out}
        return {"architecture": {"model": self.model, "model_args": dataclasses.asdict(model_config),
                                 "task": self.task, "backbone": dataclasses.asdict(self.backbone)},
                "optimisation": {"seed": self.seed, "train": train}}


def read_yaml_mapping(path: str | Path, what: str) -> dict[str, Any]:
    """The YAML mapping in `path` (a run config, a workflow config); errors name the file."""
    path = Path(path)
    try:
        d = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"{path}: cannot read the {what}: {err}") from err
    if not isinstance(d, dict):
        raise ConfigError(f"{path}: a {what} must be a mapping")
    return d


def _check_keys(cls, d: dict[str, Any], where: str) -> dict[str, Any]:
    if not isinstance(d, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(d).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; valid keys: {sorted(known)}")
    return dict(d)


DEFAULT_WORKFLOW_CONFIG = Path(__file__).resolve().parents[1] / "config" / "config.yaml"


def experiment_name(workflow_config: dict[str, Any], configfile: str | Path | None) -> str:
    """The experiment a workflow config's outputs belong to (results/<experiment>/): its `experiment`
    key, else the stem of its file; "default" for the embedded config/config.yaml (or none given)."""
    if workflow_config.get("experiment"):
        return workflow_config["experiment"]
    if configfile is None or Path(configfile).resolve() == DEFAULT_WORKFLOW_CONFIG:
        return "default"
    return Path(configfile).stem


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
        "task": dataset_task(ds),
    }
    for section in ("backbone", "train", "evaluate", "generate"):
        merged = dict(workflow_config.get(section, {}))
        merged.update(ds.get(section, {}))
        merged.update(m.get(section, {}))
        run[section] = merged
    cfg = RunConfig.from_dict(run, where=f"workflow config ({dataset}/{model})")  # fail at DAG build
    check_model_args(model, cfg.model, cfg.model_args)
    check_task(model, cfg, dataset)
    check_backbone(cfg, ds.get("tokenizer") or {}, dataset)
    return json.loads(json.dumps(run))


def dataset_task(entry: dict[str, Any]) -> str:
    """The task of a workflow config's dataset entry, by its `source`: conditional or lm."""
    return "conditional" if entry.get("source") in CONDITIONAL_SOURCES else "lm"


def dataset_models(workflow_config: dict[str, Any], dataset: str) -> list[str]:
    """The model entries that run on `dataset`: its `models` list in the order of the top-level
    `models` (the table rows), or every entry when the list is null or absent."""
    models = list(workflow_config["models"])
    chosen = workflow_config["datasets"][dataset].get("models")
    if chosen is None:
        return models
    unknown = [name for name in chosen if name not in models]
    if unknown:
        raise ConfigError(f"datasets.{dataset}.models: {unknown} not among the config's models {models}")
    return [name for name in models if name in chosen]


def check_model_args(entry: str, name: str, args: dict[str, Any]) -> None:
    """`models.<entry>`: a registered model whose config dataclass accepts `args` (keys and values)."""
    check_model_name(name, f"models.{entry}.model")
    try:
        MODELS.get(name).make_config(args, f"models.{entry}.args")
    except ValueError as err:
        raise ConfigError(str(err)) from None


def check_task(entry: str, cfg: RunConfig, dataset: str) -> None:
    """A conditional dataset needs a model with a CVAE version; a BART backbone needs a conditional
    task and a model with a BART version (and `bart` a BART backbone)."""
    if not runs_on(cfg.model, cfg.backbone.kind):
        kind = cfg.backbone.kind
        raise ConfigError(f"models.{entry}: model {cfg.model!r} has no version on backbone.kind = {kind} "
                          f"(dataset {dataset!r}; set backbone.kind in models.{entry}.backbone)")
    if cfg.task == "conditional" and not MODELS.get(cfg.model).supports_condition:
        raise ConfigError(f"models.{entry}: model {cfg.model!r} has no conditional version, but dataset "
                          f"{dataset!r} is a conditional task (datasets.{dataset}.source); list the models "
                          f"that run on it in datasets.{dataset}.models")
    if cfg.task == "lm" and cfg.backbone.kind == "bart":
        raise ConfigError(f"models.{entry} on dataset {dataset!r}: backbone.kind = bart needs a conditional "
                          f"task (datasets.{dataset}.source: {' | '.join(CONDITIONAL_SOURCES)}); list the models "
                          f"that run on it in datasets.{dataset}.models")


def check_backbone(cfg: RunConfig, tokenizer: dict[str, Any], dataset: str) -> None:
    """Backbone/tokenizer compatibility that needs no weights: the shapes of a from-scratch backbone,
    the position table of a local pretrained one, and no pretrained backbone on a fresh BPE."""
    bb, where = cfg.backbone, f"{dataset}/{cfg.model}"
    if bb.pretrained and not tokenizer.get("pretrained"):
        raise ConfigError(f"backbone.pretrained = {bb.pretrained!r} ({where}) with a from-scratch tokenizer "
                          f"(datasets.{dataset}.tokenizer.pretrained = null): the pretrained embeddings "
                          f"belong to their own vocabulary; set the tokenizer to the backbone's (e.g. "
                          f"{bb.pretrained!r}) or backbone.pretrained to null")
    if not bb.pretrained and bb.n_embd % bb.n_head:
        raise ConfigError(f"backbone.n_embd = {bb.n_embd} ({where}) is not divisible by "
                          f"backbone.n_head = {bb.n_head}")
    positions = bb.n_positions if not bb.pretrained else _local_positions(bb.pretrained)
    if positions is not None and cfg.train.max_length > positions:
        raise ConfigError(f"train.max_length = {cfg.train.max_length} ({where}) exceeds the backbone's "
                          f"{positions} positions ({'backbone.n_positions' if not bb.pretrained else bb.pretrained})")


def _local_positions(pretrained: str) -> int | None:
    """The positions of a local GPT-2 (n_positions) or BART (max_position_embeddings) directory,
    from its config.json; None for a hub name."""
    path = Path(pretrained) / "config.json"
    if not path.is_file():
        return None
    try:
        config = json.loads(path.read_text())
        return int(config["n_positions"] if "n_positions" in config else config["max_position_embeddings"])
    except (ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"{path}: cannot read n_positions (GPT-2) or max_position_embeddings (BART): "
                          f"{err}") from None
