"""`python -m della export-lm`: a trained plain GPT-2 LM as a Hugging Face GPT-2 directory.

MAUVE featurises texts with an autoregressive LM's last hidden state at the last token (Pillutla
et al. 2021; DELLA uses GPT-2 large). Without a model hub, the LM is the dataset's own `gpt2` run,
and this command makes it loadable by `metrics/encoders.py` like any Hugging Face model:

- `config.json` + `model.safetensors`: `GPT2LMHeadModel` with the run's weights (the backbone keeps
  Hugging Face `GPT2Model`'s names and layout, so they map one to one; the LM head tied or not, as trained);
- the run's tokenizer as a `PreTrainedTokenizerFast` whose post-processor prepends `<s>`, as every
  training sequence began (no `</s>`: the features are those of the text, as mauve-text's are), and
  whose inputs are `input_ids` and `attention_mask` only (GPT-2 would add token-type embeddings);
- `della-export.json`: the source run dir, the MD5 of its `model/model.pt`, its tokenizer dir and
  the MD5 of its `tokenizer.json`, which `metrics/encoders.py` records with the features.

The directory is written to a temporary sibling and renamed into place.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
from pathlib import Path

import torch

from della.config import RunConfig
from della.io import atomic_write_json, md5sum, replace_dir, umask
from della.run import RunDir

log = logging.getLogger(__name__)

EXPORT_RECORD = "della-export.json"
BACKBONE_PREFIX = "backbone.gpt2."


def hf_state_dict(state: dict[str, torch.Tensor], tied: bool) -> dict[str, torch.Tensor]:
    """della's plain-LM state_dict -> GPT2LMHeadModel's (`transformer.*`, plus `lm_head.weight`)."""
    unexpected = sorted(k for k in state if not k.startswith(BACKBONE_PREFIX) and k != "lm_head.weight")
    if unexpected:
        raise ValueError(f"model.pt: unexpected parameters for a plain GPT-2 LM: {unexpected[:5]}")
    out = {"transformer." + k[len(BACKBONE_PREFIX):]: v for k, v in state.items() if k.startswith(BACKBONE_PREFIX)}
    out["lm_head.weight"] = out["transformer.wte.weight"] if tied else state["lm_head.weight"]
    return out


def fast_tokenizer(tokenizer_dir: Path):
    """The run's tokenizer as transformers loads it, prepending <s> to every text."""
    from tokenizers import Tokenizer, processors
    from transformers import PreTrainedTokenizerFast

    from della.data.tokenizer import load_tokenizer

    tok = load_tokenizer(tokenizer_dir)  # checks the files and the special ids
    backend = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    bos = tok.info["bos_token"]
    backend.post_processor = processors.TemplateProcessing(single=f"{bos} $A", special_tokens=[(bos, tok.bos_id)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=bos, eos_token=tok.info["eos_token"],
                                   pad_token=tok.info["pad_token"], padding_side="right",
                                   model_input_names=["input_ids", "attention_mask"])


def export_lm(run_dir: str | Path, out: str | Path) -> dict:
    """Write the HF GPT-2 directory of a finished `gpt2` run to `out`; returns the export record."""
    from transformers import GPT2Config, GPT2LMHeadModel

    run = RunDir(Path(run_dir))
    meta_path, weights = run.model / "config.json", run.model / "model.pt"
    for path in (run.config, meta_path, weights):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such file (a finished `python -m della train` run dir is needed)")
    meta = json.loads(meta_path.read_text())
    backbone = meta.get("backbone") or {"kind": "gpt2", "config": meta.get("gpt2_config")}
    if meta["model"] != "gpt2" or meta.get("conditional") or backbone["kind"] != "gpt2":
        raise ValueError(f"{meta_path}: model {meta['model']!r} (backbone {backbone['kind']}"
                         f"{', conditional' if meta.get('conditional') else ''}) is not the plain GPT-2 LM "
                         "(workflow entry `gpt2`); only its hidden states are an LM's")
    tied = meta["model_args"].get("tie_lm_head", True)
    config = GPT2Config.from_dict({**backbone["config"], "tie_word_embeddings": tied})
    model = GPT2LMHeadModel(config)
    model.load_state_dict(hf_state_dict(torch.load(weights, map_location="cpu"), tied), strict=True)
    tokenizer_dir = Path(RunConfig.load(run.config).tokenizer_dir)
    record = {"source": "della-bench plain GPT-2 LM", "run_dir": str(run.root), "model_md5": md5sum(weights),
              "tokenizer_dir": str(tokenizer_dir), "tokenizer_md5": md5sum(tokenizer_dir / "tokenizer.json"),
              "prepends": "<s>", "tied_lm_head": tied}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(str(tmp))
        fast_tokenizer(tokenizer_dir).save_pretrained(str(tmp))
        atomic_write_json(tmp / EXPORT_RECORD, record)
        for path in tmp.iterdir():  # safetensors writes 0600; the others follow the umask
            os.chmod(path, 0o666 & ~umask())
        replace_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return record


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = ("the plain GPT-2 LM of a run dir as a Hugging Face GPT-2 directory "
                     "(MAUVE's feature encoder: `python -m metrics compute --mauve-encoder DIR`)")
    p.add_argument("--run", required=True, help="run dir of a trained `gpt2` model (model/ + config.yaml)")
    p.add_argument("--out", required=True, help="output directory, e.g. results/<experiment>/encoders/<dataset>")


def run(args: argparse.Namespace) -> None:
    record = export_lm(args.run, args.out)
    log.info("exported %s (model.pt md5 %s) -> %s", args.run, record["model_md5"], args.out)
