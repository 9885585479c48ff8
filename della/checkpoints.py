"""`python -m della import-checkpoint`: a run directory from a checkpoint made elsewhere.

The run directory gets what `python -m della train` would leave for evaluation: `config.yaml` (the
run config of a workflow-config entry, built as `python -m della run-config` builds it, with the
backbone's shape taken from the checkpoint) and `model/` (`config.json` + `model.pt`), plus
`imported.json` (the source file, its MD5 and the mapping used). `python -m della evaluate --run DIR`
and `python -m della generate --run DIR` then work unchanged. The dataset's tokenizer
(`results/<experiment>/tokenizers/<dataset>`, e.g. `python -m della tokenizer --pretrained gpt2`) must have the
checkpoint's vocabulary size.

Two formats:

- `hf-gpt2`: a Hugging Face GPT-2 directory (`config.json` + weights of `GPT2Model` or
  `GPT2LMHeadModel`) -> the plain LM (registry `gpt2`, workflow entry `gpt2` by default). The
  weights load as `backbone.pretrained` does for training: embeddings are resized to the
  tokenizer's vocabulary (new rows, e.g. `<s>`/`</s>`, start untrained); the LM head is tied.
- `della-official`: a `state_dict` of the official DELLA code (OpenVLG/DELLA `model.py`, class
  `Della`, saved per epoch as `model_epoch_<k>.pt`) -> the `della-official` entry (registry `della`
  with the official code's switches). Read from the tensors: layers, width, positions, vocabulary,
  latent size, LMF rank and the BOW head; the number of heads is not stored (`--n-head`, default
  width / 64 as in every GPT-2 size). The entry's `model_args` must keep the official code's
  behaviour: `pool: attention`, `pool_mask: false`, `tie_lm_head: false`, `first_prior: learned`,
  `lmf_mode: paper`, `kl_aggregate: mean`, `clamp: 5.0`; `begin_layer`/`end_layer` must be the
  checkpoint's (default: all layers).

Name mapping of `della-official` (i: absolute layer index, g = i - begin_layer: latent group,
j: LMF factor, d: width, p: latent size):

| official state_dict key | della-bench parameter |
| --- | --- |
| `encoder.wte.weight`, `encoder.wpe.weight` | `backbone.gpt2.wte.weight`, `backbone.gpt2.wpe.weight` |
| `encoder.h.{i}.{ln_1,attn.c_attn,attn.c_proj,ln_2,mlp.c_fc,mlp.c_proj}.{weight,bias}` | `backbone.gpt2.h.{i}.<same>` (both Conv1D, (in, out)) |
| `encoder.ln_f.{weight,bias}` | `backbone.gpt2.ln_f.{weight,bias}` |
| `encoder.pooling.{i}.attention_weights` (d) | `pool.{g}.w` |
| `encoder.recog_network.{i}.weight` (2p, d + p), input [x^(l); h_l] | `recog_x.weight[g]` = columns :d, `recog_h.weight[g]` = columns d: |
| `encoder.recog_network.{i}.bias` | `recog_x.bias[g]` (`recog_h` has none) |
| `encoder.prior_network.{i}.{weight,bias}` | `prior.{weight,bias}[g]` |
| `encoder.reccurnt_cell_weight_ih.{i}.{weight,bias}` | `cell_ih.{weight,bias}[g]` |
| `encoder.reccurnt_cell_weight_hh.{i}.{weight,bias}` | `cell_hh.{weight,bias}[g]` |
| `encoder.h.{i}.attn.lmf.text_factor.{j}.weight` (d, d + 1) / `.bias` (d) | `fusion.text_weight[g, j]` / `fusion.text_bias[g, j]` |
| `encoder.h.{i}.attn.lmf.latent_factor.{j}.weight` (d, p + 1) / `.bias` (d) | `fusion.latent_weight[g, j]` / `fusion.latent_bias[g, j]` |
| `decoder.lm_head.weight` | `lm_head.weight` (untied) |
| `decoder.mlp_bow.{weight,bias}` (with `--use_bow`) | `bow.{weight,bias}` |

Not imported: `decoder.{wte,wpe,h,ln_f}.*` (the very tensors of `encoder.*`: the official encoder
and decoder share them; checked equal), the causal-mask buffers `*.attn.bias` and
`*.attn.masked_bias`, and the pooling, heads and LMF of layers outside begin..end (the official
forward never uses them). Modules are indexed by the absolute layer, as the official training
and evaluation do (its generation indexes by i - begin_layer, reference §10 B1; the two agree
for begin_layer = 0). A leading `module.` (DataParallel) is stripped.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import re
from pathlib import Path
from typing import Any

import torch
import yaml

from della.config import RunConfig, experiment_name, resolve_run_config
from della.io import atomic_write_json, atomic_write_text, md5sum, read_json
from della.run import RunDir

log = logging.getLogger(__name__)

IMPORT_RECORD = "imported.json"
DEFAULT_ENTRY = {"hf-gpt2": "gpt2", "della-official": "della-official"}
OFFICIAL_ARGS = {"pool": "attention", "pool_mask": False, "tie_lm_head": False, "first_prior": "learned",
                 "lmf_mode": "paper", "kl_aggregate": "mean", "clamp": 5.0}
GPT2_BLOCK = ("ln_1", "attn.c_attn", "attn.c_proj", "ln_2", "mlp.c_fc", "mlp.c_proj")
LATENT_HEADS = {"prior_network": "prior", "reccurnt_cell_weight_ih": "cell_ih", "reccurnt_cell_weight_hh": "cell_hh"}


class CheckpointError(ValueError):
    """The checkpoint does not match the format or the model entry; the message names the key."""


# ---------------------------------------------------------------------------------------------
# official DELLA state_dict -> della-bench parameters


def load_official_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of an official checkpoint, without a DataParallel `module.` prefix."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, ValueError) as err:
        raise CheckpointError(f"{path}: cannot read a torch state_dict: {err}") from err
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: expected a state_dict (a mapping of names to tensors)")
    return {k.removeprefix("module."): v for k, v in state.items()}


def official_shape(state: dict[str, torch.Tensor], where: str) -> dict[str, int]:
    """Sizes read from the tensors: n_layer, n_embd, n_positions, vocab_size, latent_size, lmf_rank."""
    for key in ("encoder.wte.weight", "encoder.wpe.weight", "encoder.prior_network.0.weight"):
        if key not in state:
            raise CheckpointError(f"{where}: no {key!r}: not an official DELLA state_dict")
    vocab_size, n_embd = state["encoder.wte.weight"].shape
    layers = {int(m.group(1)) for k in state if (m := re.match(r"encoder\.h\.(\d+)\.", k))}
    ranks = {int(m.group(1)) for k in state if (m := re.match(r"encoder\.h\.0\.attn\.lmf\.text_factor\.(\d+)\.", k))}
    return {"n_layer": len(layers), "n_embd": n_embd, "n_positions": state["encoder.wpe.weight"].shape[0],
            "vocab_size": vocab_size, "latent_size": state["encoder.prior_network.0.weight"].shape[1],
            "lmf_rank": len(ranks)}


def map_official(state: dict[str, torch.Tensor], layers: list[int], where: str) -> dict[str, torch.Tensor]:
    """The della-bench state_dict of a `della` model whose latent groups sit on `layers`."""
    out: dict[str, torch.Tensor] = {}

    def take(key: str) -> torch.Tensor:
        if key not in state:
            raise CheckpointError(f"{where}: missing {key!r}")
        return state[key]

    n_layer = official_shape(state, where)["n_layer"]
    for name in ("wte.weight", "wpe.weight", "ln_f.weight", "ln_f.bias"):
        out[f"backbone.gpt2.{name}"] = take(f"encoder.{name}")
    for i in range(n_layer):
        for module in GPT2_BLOCK:
            for param in ("weight", "bias"):
                out[f"backbone.gpt2.h.{i}.{module}.{param}"] = take(f"encoder.h.{i}.{module}.{param}")
    d = out["backbone.gpt2.wte.weight"].shape[1]
    groups: dict[str, list[torch.Tensor]] = {}  # per-group tensors, stacked into GroupedLinear/LowRankFusion below
    for g, i in enumerate(layers):
        out[f"pool.{g}.w"] = take(f"encoder.pooling.{i}.attention_weights")
        recog = take(f"encoder.recog_network.{i}.weight")
        per_group = {"recog_x.weight": recog[:, :d], "recog_h.weight": recog[:, d:],
                     "recog_x.bias": take(f"encoder.recog_network.{i}.bias")}
        for official, ours in LATENT_HEADS.items():
            for param in ("weight", "bias"):
                per_group[f"{ours}.{param}"] = take(f"encoder.{official}.{i}.{param}")
        for factor, ours in (("text_factor", "text"), ("latent_factor", "latent")):
            prefix = f"encoder.h.{i}.attn.lmf.{factor}"
            rank = len({k for k in state if k.startswith(f"{prefix}.") and k.endswith(".bias")})
            per_group[f"fusion.{ours}_weight"] = torch.stack([take(f"{prefix}.{j}.weight") for j in range(rank)])
            per_group[f"fusion.{ours}_bias"] = torch.stack([take(f"{prefix}.{j}.bias") for j in range(rank)])
        for name, tensor in per_group.items():
            groups.setdefault(name, []).append(tensor)
    out.update({name: torch.stack(tensors) for name, tensors in groups.items()})
    out["lm_head.weight"] = take("decoder.lm_head.weight")
    if "decoder.mlp_bow.weight" in state:
        out["bow.weight"], out["bow.bias"] = take("decoder.mlp_bow.weight"), take("decoder.mlp_bow.bias")
    check_shared_decoder(state, where)
    return {k: v.detach().clone().float() for k, v in out.items()}


def check_shared_decoder(state: dict[str, torch.Tensor], where: str) -> None:
    """The official decoder's Transformer tensors are the encoder's; refuse a checkpoint where not."""
    for key, tensor in state.items():
        if key.startswith("decoder.") and not key.startswith(("decoder.lm_head.", "decoder.mlp_bow.")):
            twin = "encoder." + key.removeprefix("decoder.")
            if twin not in state or not torch.equal(state[twin], tensor):
                raise CheckpointError(f"{where}: {key!r} differs from {twin!r}; the official model shares them")


# ---------------------------------------------------------------------------------------------
# building the run directory


def import_official(source: Path, cfg: RunConfig, tokenizer, n_head: int | None):
    """-> (model, backbone config) of an official DELLA state_dict under the run config's entry."""
    from della.models.backbone import GPT2Config
    from della.models.base import build_model
    from della.models.configs import DellaConfig

    if cfg.model != "della":
        raise CheckpointError(f"an official DELLA checkpoint imports as registry model 'della', not {cfg.model!r}")
    state = load_official_state_dict(source)
    shape = official_shape(state, str(source))
    args = {**cfg.model_args, "latent_size": shape["latent_size"], "lmf_rank": shape["lmf_rank"],
            "use_bow": "decoder.mlp_bow.weight" in state}
    effective = dataclasses.asdict(DellaConfig(**args))
    departs = {k: effective[k] for k, v in OFFICIAL_ARGS.items() if effective[k] != v}
    if departs:
        raise CheckpointError(f"model_args {departs} of the entry depart from the official code; an official "
                              f"checkpoint needs {OFFICIAL_ARGS}")
    if tokenizer.vocab_size != shape["vocab_size"]:
        raise CheckpointError(f"{source}: vocabulary of {shape['vocab_size']} tokens, but the dataset's tokenizer has "
                              f"{tokenizer.vocab_size} (make it with `python -m della tokenizer --pretrained ...`)")
    n_head = n_head or default_heads(shape["n_embd"])
    gpt2_config = GPT2Config(vocab_size=shape["vocab_size"], n_positions=shape["n_positions"], n_embd=shape["n_embd"],
                             n_layer=shape["n_layer"], n_head=n_head, bos_token_id=tokenizer.bos_id,
                             eos_token_id=tokenizer.eos_id, pad_token_id=tokenizer.pad_id)
    architecture = {"kind": "gpt2", "config": gpt2_config.to_dict()}
    model = build_model("della", args, vocab_of(tokenizer), architecture=architecture)
    model.load_state_dict(map_official(state, model.layers, str(source)), strict=True)
    backbone = dataclasses.replace(cfg.backbone, pretrained=None, n_layer=shape["n_layer"], n_embd=shape["n_embd"],
                                   n_head=n_head, n_positions=shape["n_positions"])
    return model, backbone


def import_hf_gpt2(source: Path, cfg: RunConfig, tokenizer, n_head: int | None):
    """-> (model, backbone config) of a Hugging Face GPT-2 directory as the plain LM (its config.json
    gives the head count, so `n_head` is not needed)."""
    from della.models.backbone import GPT2Config
    from della.models.base import build_model

    if cfg.model != "gpt2" or not cfg.model_args.get("tie_lm_head", True):
        raise CheckpointError(f"an HF GPT-2 directory imports as registry model 'gpt2' with its tied LM head, "
                              f"not {cfg.model!r} with {cfg.model_args}")
    if not (source / "config.json").is_file():
        raise CheckpointError(f"{source}: not a Hugging Face model directory (no config.json)")
    hf = GPT2Config.from_dict(read_json(source / "config.json"))
    backbone = dataclasses.replace(cfg.backbone, pretrained=str(source), n_layer=hf.n_layer, n_embd=hf.n_embd,
                                   n_head=hf.n_head, n_positions=hf.n_positions)
    model = build_model("gpt2", cfg.model_args, vocab_of(tokenizer), backbone_config=backbone)
    return model, backbone


IMPORTERS = {"hf-gpt2": import_hf_gpt2, "della-official": import_official}


def default_heads(n_embd: int) -> int:
    if n_embd % 64:
        raise CheckpointError(f"width {n_embd} is not a multiple of GPT-2's head size 64: pass --n-head")
    return n_embd // 64


def vocab_of(tokenizer):
    from della.models.base import Vocab

    return Vocab(size=tokenizer.vocab_size, bos_id=tokenizer.bos_id, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id)


def import_checkpoint(fmt: str, source: str | Path, workflow_config: dict[str, Any], dataset: str, entry: str,
                      seed: int, out: str | Path, n_head: int | None = None, results: str = "results") -> Path:
    """Write the run directory `out` for `source` (data and tokenizer under `results`); returns it."""
    from della.data.tokenizer import load_tokenizer

    source, run = Path(source), RunDir(Path(out))
    if not source.exists():
        raise FileNotFoundError(f"{source}: no such checkpoint")
    cfg = RunConfig.from_dict(resolve_run_config(workflow_config, dataset, entry, seed, results))
    model, backbone = IMPORTERS[fmt](source, cfg, load_tokenizer(cfg.tokenizer_dir), n_head)
    run_config = dataclasses.replace(cfg, model_args=dataclasses.asdict(model.config), backbone=backbone)
    model.save_pretrained(run.model)
    atomic_write_text(run.config, yaml.safe_dump(run_config.to_dict(), sort_keys=False))
    atomic_write_json(run.root / IMPORT_RECORD, {
        "kind": "import", "format": fmt, "source": str(source.resolve()),
        "md5": md5sum(source) if source.is_file() else None, "entry": entry,
        "mapping": "della/checkpoints.py (module docstring)" if fmt == "della-official" else "GPT2Model.from_pretrained",
        "parameters": sum(p.numel() for p in model.parameters())})
    log.info("imported %s (%s) as %s -> %s", source, fmt, entry, run.root)
    return run.root


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = "make a run directory (for evaluate/generate) from a checkpoint trained elsewhere"
    p.add_argument("--format", required=True, choices=sorted(IMPORTERS), help="what --source is")
    p.add_argument("--source", required=True, help="official state_dict (.pt) or HF GPT-2 directory")
    p.add_argument("--config", default="config/config.yaml", help="workflow config (default: %(default)s)")
    p.add_argument("--dataset", required=True, help="a key of the config's `datasets` (its data and tokenizer)")
    p.add_argument("--model", default=None, help="the config's model entry (default: gpt2 | della-official)")
    p.add_argument("--seed", type=int, default=0, help="the run config's seed (evaluation sampling)")
    p.add_argument("--n-head", type=int, default=None, help="della-official: attention heads (default: width/64)")
    p.add_argument("--out", required=True, help="run directory to write, e.g. results/<experiment>/runs/<dataset>/<entry>/imported")


def run(args: argparse.Namespace) -> None:
    from della.run_config_cli import load_workflow_config

    config = load_workflow_config(args.config)
    import_checkpoint(args.format, args.source, config, args.dataset, args.model or DEFAULT_ENTRY[args.format],
                      args.seed, args.out, args.n_head, results=f"results/{experiment_name(config, args.config)}")
