"""The shared GPT-2 Transformer, run as encoder (bidirectional) or decoder (causal).

The weights are Hugging Face's `GPT2Model` (so a pretrained GPT-2 loads by name or local dir),
but the forward pass is ours: every latent-injection paradigm needs a different hook into it,
and the encoder pass needs a bidirectional mask that HF's mask builders no longer offer.

Hooks a decoder pass accepts (all optional, see `Injection`):
- `embed`:  (N, d) added to every input embedding (Embedding paradigm);
- `memory`: per layer (N, d), one extra attention slot used as both key and value (Memory paradigm);
- `qkv`:    per layer a function (h, c_attn) -> (Q, K, V') replacing the layer's QKV projection
            (DELLA's low-rank tensor product on the values, before the head split).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import torch
import torch.nn.functional as F
from torch import nn

from della.config import BackboneConfig

if TYPE_CHECKING:  # transformers is imported where a backbone is built: a DAG parse needs none
    from transformers import GPT2Model


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
    def __init__(self, gpt2: GPT2Model):
        super().__init__()
        self.gpt2 = gpt2
        cfg = gpt2.config
        self.n_layer, self.n_embd, self.n_head = cfg.n_layer, cfg.n_embd, cfg.n_head
        self.n_positions = cfg.n_positions
        self.fused_gelu = cfg.activation_function == "gelu_new"

    @classmethod
    def build(cls, cfg: BackboneConfig, vocab_size: int, **special_ids: int) -> "Backbone":
        """special_ids: bos_token_id, eos_token_id, pad_token_id of the tokenizer."""
        from transformers import GPT2Config, GPT2Model

        if cfg.pretrained:
            gpt2 = GPT2Model.from_pretrained(cfg.pretrained, attn_implementation="sdpa")
            if gpt2.config.vocab_size != vocab_size:
                gpt2.resize_token_embeddings(vocab_size)
            gpt2.config.update(special_ids)
        else:
            if cfg.n_embd % cfg.n_head:
                raise ValueError(f"backbone.n_embd ({cfg.n_embd}) must be divisible by backbone.n_head ({cfg.n_head})")
            config = GPT2Config(vocab_size=vocab_size, n_positions=cfg.n_positions, n_embd=cfg.n_embd,
                                n_layer=cfg.n_layer, n_head=cfg.n_head, resid_pdrop=cfg.dropout,
                                embd_pdrop=cfg.dropout, attn_pdrop=cfg.dropout, **special_ids)
            gpt2 = GPT2Model(config)
        return cls(gpt2)

    @classmethod
    def from_config(cls, config: dict) -> "Backbone":
        """The exact shape of a saved backbone (its HF config as a dict); the weights are loaded after."""
        from transformers import GPT2Config, GPT2Model

        return cls(GPT2Model(GPT2Config.from_dict(config)))

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
            x = x + self._mlp(block.mlp, block.ln_2(x))
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

    def _mlp(self, mlp, h):
        if self.fused_gelu:  # gelu_new is exactly the tanh approximation; one fused kernel
            return mlp.dropout(mlp.c_proj(F.gelu(mlp.c_fc(h), approximate="tanh")))
        return mlp(h)

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
