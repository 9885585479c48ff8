"""The shared GPT-2 Transformer, run as encoder (bidirectional) or decoder (causal).

`GPT2` holds the weights under Hugging Face `GPT2Model`'s names and layout and initialises them as
it does, draw for draw, so a pretrained GPT-2 loads by name or local dir (through transformers) and
a seed gives the weights it gave. The module is ours because the forward pass is: every latent-
injection paradigm needs a different hook into it, the encoder pass a bidirectional mask that HF's
mask builders no longer offer, and a job that trains or evaluates a GPT-2 model built from a config
then imports torch alone (transformers' modelling stack takes about 3 s more to import, in every
such job of the DAG; Optimus's BERT encoder and the BART models still need it).

Hooks a decoder pass accepts (all optional, see `Injection`):
- `embed`:  (N, d) added to every input embedding (Embedding paradigm);
- `memory`: per layer (N, d), one extra attention slot used as both key and value (Memory paradigm);
- `qkv`:    per layer a function (h, c_attn) -> (Q, K, V') replacing the layer's QKV projection
            (DELLA's low-rank tensor product on the values, before the head split).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from della.config import BackboneConfig

def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {  # functions, so a model pickles
    "gelu_new": gelu_tanh,  # GPT-2's: exactly the tanh approximation
    "gelu_pytorch_tanh": gelu_tanh,
    "gelu": F.gelu,
    "relu": F.relu,
    "silu": F.silu,
}


def check_activation(name: str) -> None:
    if name not in ACTIVATIONS:
        raise ValueError(f"activation_function {name!r} is not one of {sorted(ACTIVATIONS)}")


def hf_config_fields(cls: type, config: dict[str, Any], model_type: str) -> dict[str, Any]:
    """The keys of an HF config dict (a checkpoint's, or config.json) that dataclass `cls`, a config
    under HF's names, has; its other keys are HF's bookkeeping. Its model_type must be `model_type`."""
    if config.get("model_type", model_type) != model_type:
        raise ValueError(f"not a {model_type} config: model_type {config['model_type']!r}")
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in config.items() if k in names}


HF_ALIASES = {"hidden_size": "n_embd", "num_attention_heads": "n_head", "num_hidden_layers": "n_layer",
              "max_position_embeddings": "n_positions"}  # transformers' GPT2Config.attribute_map


@dataclass
class GPT2Config:
    """The shape of a GPT-2, under the keys of Hugging Face's `GPT2Config` (so `to_dict()` loads there)."""

    vocab_size: int = 50257
    n_positions: int = 1024
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    n_inner: int | None = None  # MLP width; None: 4 * n_embd
    activation_function: str = "gelu_new"
    resid_pdrop: float = 0.1
    embd_pdrop: float = 0.1
    attn_pdrop: float = 0.1
    layer_norm_epsilon: float = 1e-5
    initializer_range: float = 0.02
    scale_attn_weights: bool = True
    scale_attn_by_inverse_layer_idx: bool = False
    bos_token_id: int | None = 50256
    eos_token_id: int | None = 50256
    pad_token_id: int | None = None

    def __post_init__(self):
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        check_activation(self.activation_function)

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> "GPT2Config":
        """From an HF GPT-2 config dict, HF's generic names for the shape accepted too; not one with
        cross-attention, which this decoder does not have."""
        if config.get("add_cross_attention"):
            raise ValueError("a GPT-2 with cross-attention (add_cross_attention) is not supported")
        return cls(**hf_config_fields(cls, {HF_ALIASES.get(k, k): v for k, v in config.items()}, "gpt2"))

    def to_dict(self) -> dict[str, Any]:
        return {"model_type": "gpt2", **dataclasses.asdict(self)}


class Conv1D(nn.Module):
    """GPT-2's linear layer: weight (in, out), y = bias + x @ weight."""

    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_in, n_out))
        self.bias = nn.Parameter(torch.zeros(n_out))
        nn.init.normal_(self.weight, std=0.02)  # overwritten by GPT2's init; drawn as HF's Conv1D draws it

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addmm(self.bias, x.reshape(-1, x.shape[-1]), self.weight).view(*x.shape[:-1], -1)


class GPT2Attention(nn.Module):
    def __init__(self, config: GPT2Config, layer_idx: int):
        super().__init__()
        d = config.n_embd
        self.c_attn = Conv1D(d, 3 * d)
        self.c_proj = Conv1D(d, d)
        self.attn_dropout = nn.Dropout(config.attn_pdrop)
        self.resid_dropout = nn.Dropout(config.resid_pdrop)
        self.scaling = (d // config.n_head) ** -0.5 if config.scale_attn_weights else 1.0
        if config.scale_attn_by_inverse_layer_idx:
            self.scaling /= layer_idx + 1


class GPT2MLP(nn.Module):
    def __init__(self, config: GPT2Config):
        super().__init__()
        inner = config.n_inner or 4 * config.n_embd
        self.c_fc = Conv1D(config.n_embd, inner)
        self.c_proj = Conv1D(inner, config.n_embd)
        self.act = ACTIVATIONS[config.activation_function]
        self.dropout = nn.Dropout(config.resid_pdrop)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.act(self.c_fc(h))))


class GPT2Block(nn.Module):
    def __init__(self, config: GPT2Config, layer_idx: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.attn = GPT2Attention(config, layer_idx)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.mlp = GPT2MLP(config)


class GPT2(nn.Module):
    """GPT-2's weights (the forward pass is `Backbone`'s)."""

    def __init__(self, config: GPT2Config):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.n_positions, config.n_embd)
        self.drop = nn.Dropout(config.embd_pdrop)
        self.h = nn.ModuleList([GPT2Block(config, i) for i in range(config.n_layer)])
        self.ln_f = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """GPT-2's scheme: N(0, initializer_range) weights, zero biases, unit LayerNorms, and the
        residual projections drawn again at std initializer_range / sqrt(2 n_layer). The order of the draws is HF's
        (`GPT2PreTrainedModel._init_weights` over the modules, children first)."""
        std = self.config.initializer_range
        nn.init.normal_(self.wte.weight, std=std)
        nn.init.normal_(self.wpe.weight, std=std)
        for block in self.h:
            for sublayer in (block.attn, block.mlp):
                for linear in sublayer.children():
                    if isinstance(linear, Conv1D):
                        nn.init.normal_(linear.weight, std=std)
                        nn.init.zeros_(linear.bias)
                nn.init.normal_(sublayer.c_proj.weight, std=std / math.sqrt(2 * self.config.n_layer))
            for norm in (block.ln_1, block.ln_2):
                nn.init.ones_(norm.weight)
                nn.init.zeros_(norm.bias)
        nn.init.ones_(self.ln_f.weight)
        nn.init.zeros_(self.ln_f.bias)


def can_inspect(t: torch.Tensor) -> bool:
    """Whether a forward may read t's values on the host for a shortcut (no padding: no mask). Free
    on the CPU; on a GPU it waits for the queued kernels and under torch.compile it breaks the graph,
    so there the general path runs (the same numbers)."""
    return t.device.type == "cpu" and not torch.compiler.is_compiling()


KVCache = list[tuple[torch.Tensor, torch.Tensor]]  # per layer (N, H, T_past, hd) keys and values


@dataclass
class Injection:
    embed: torch.Tensor | None = None
    memory: list[torch.Tensor] | None = None
    qkv: dict[int, Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = field(default_factory=dict)


@dataclass
class BackboneOutput:
    hidden: torch.Tensor | None  # (N, T, d) after ln_f; None when `final_norm=False`
    layers: list[torch.Tensor]  # per block (N, T, d), before ln_f; empty unless asked for
    cache: KVCache | None


class Backbone(nn.Module):
    def __init__(self, gpt2: GPT2):
        super().__init__()
        self.gpt2 = gpt2
        cfg = gpt2.config
        self.n_layer, self.n_embd, self.n_head = cfg.n_layer, cfg.n_embd, cfg.n_head
        self.n_positions = cfg.n_positions

    @classmethod
    def build(cls, cfg: BackboneConfig, vocab_size: int, **special_ids: int) -> "Backbone":
        """special_ids: bos_token_id, eos_token_id, pad_token_id of the tokenizer."""
        if cfg.pretrained:
            return cls(load_pretrained(cfg.pretrained, vocab_size, special_ids))
        config = GPT2Config(vocab_size=vocab_size, n_positions=cfg.n_positions, n_embd=cfg.n_embd,
                            n_layer=cfg.n_layer, n_head=cfg.n_head, resid_pdrop=cfg.dropout,
                            embd_pdrop=cfg.dropout, attn_pdrop=cfg.dropout, **special_ids)
        return cls(GPT2(config))

    @classmethod
    def from_config(cls, config: dict) -> "Backbone":
        """The exact shape of a saved backbone (its HF-style config dict); the weights are loaded after."""
        return cls(GPT2(GPT2Config.from_dict(config)))

    @property
    def wte(self) -> nn.Embedding:
        return self.gpt2.wte

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
                causal: bool, cache: KVCache | None = None, inject: Injection | None = None,
                return_layers: bool = False, final_norm: bool = True,
                use_cache: bool = False) -> BackboneOutput:
        """input_ids (N, T). Causal passes assume right padding (pad keys then only follow the
        real tokens, which the causal mask already hides); bidirectional passes mask pad keys."""
        inject = inject or Injection()
        T = input_ids.shape[1]
        past = 0 if cache is None else cache[0][0].shape[2]
        if past + T > self.n_positions:
            raise ValueError(f"sequence of {past + T} tokens exceeds the backbone's {self.n_positions} positions")
        pos = torch.arange(past, past + T, device=input_ids.device)
        x = self.gpt2.wte(input_ids) + self.gpt2.wpe(pos)
        if inject.embed is not None:
            x = x + inject.embed[:, None, :]
        x = self.gpt2.drop(x)
        mask, is_causal = self._attention_mask(attention_mask, causal, past, T, inject.memory is not None,
                                               input_ids.device)
        layers, new_cache = [], ([] if use_cache else None)
        for i, block in enumerate(self.gpt2.h):
            layer_cache = None if cache is None else cache[i]
            memory = None if inject.memory is None else inject.memory[i]
            a, kv = self._attention(block.attn, block.ln_1(x), mask, is_causal, layer_cache, memory,
                                    inject.qkv.get(i))
            x = x + a
            x = x + block.mlp(block.ln_2(x))
            if return_layers:
                layers.append(x)
            if new_cache is not None:
                new_cache.append(kv)
        hidden = self.gpt2.ln_f(x) if final_norm else None
        return BackboneOutput(hidden=hidden, layers=layers, cache=new_cache)

    def _attention_mask(self, attention_mask, causal, past, T, has_memory, device):
        """A boolean mask (N, 1, T, K) on `device` where True = may attend, or (None, is_causal)."""
        if causal and not has_memory and past == 0:
            return None, True  # fast path: SDPA's built-in causal mask
        if causal and not has_memory and T == 1:
            return None, False  # one new token sees the whole cache
        K = past + T
        if causal:
            q = torch.arange(past, past + T, device=device)[:, None]
            allowed = torch.arange(K, device=device)[None, :] <= q  # (T, K)
            allowed = allowed[None, None]
        else:
            if attention_mask is None or (can_inspect(attention_mask) and bool(attention_mask.all())):
                return None, False  # no padding: SDPA's unmasked kernel
            allowed = attention_mask.bool()[:, None, None, :]  # (N, 1, 1, K) pad keys hidden
        if has_memory:  # one memory slot in front, visible to every query
            ones = torch.ones(*allowed.shape[:-1], 1, dtype=torch.bool, device=allowed.device)
            allowed = torch.cat([ones, allowed], dim=-1)
        return allowed, False

    def _attention(self, attn, h, mask, is_causal, layer_cache, memory, qkv_fn):
        N, T, d = h.shape
        H, hd = self.n_head, d // self.n_head
        q, k, v = attn.c_attn(h).split(d, dim=2) if qkv_fn is None else qkv_fn(h, attn.c_attn)
        q, k, v = (t.view(N, T, H, hd).transpose(1, 2) for t in (q, k, v))  # (N, H, T, hd)
        if layer_cache is not None:
            k = torch.cat([layer_cache[0], k], dim=2)
            v = torch.cat([layer_cache[1], v], dim=2)
        kv = (k, v)
        if memory is not None:
            m = memory.view(N, H, 1, hd)  # the same vector is the extra key and the extra value
            k, v = torch.cat([m, k], dim=2), torch.cat([m, v], dim=2)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal,
                                           dropout_p=attn.attn_dropout.p if self.training else 0.0,
                                           scale=attn.scaling)
        y = y.transpose(1, 2).reshape(N, T, d)
        return attn.resid_dropout(attn.c_proj(y)), kv


def load_pretrained(name_or_dir: str, vocab_size: int, special_ids: dict[str, int]) -> GPT2:
    """A pretrained GPT-2 (HF name or local dir, loaded by transformers), its embeddings resized to
    `vocab_size` if they differ (the new rows drawn by transformers)."""
    from transformers import GPT2Model

    hf = GPT2Model.from_pretrained(name_or_dir)
    if hf.config.vocab_size != vocab_size:
        hf.resize_token_embeddings(vocab_size)
    with torch.device("meta"):  # no memory and no random draws for weights about to be replaced
        gpt2 = GPT2(GPT2Config.from_dict({**hf.config.to_dict(), **special_ids}))
    gpt2.load_state_dict(hf.state_dict(), strict=True, assign=True)
    return gpt2
