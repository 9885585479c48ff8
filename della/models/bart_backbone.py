"""The BART encoder-decoder, run by our own forward over Hugging Face `BartModel` weights.

The second backbone beside the GPT-2 one (`della/models/backbone.py`), for the conditional tasks
the paper runs on BART-base (CNN/DM, Quora). The weights are HF's (so `facebook/bart-base` loads by
name or local dir), the forward pass is ours, so each latent-injection paradigm gets its hook into
the decoder:

- `embed`:   (N, d) added to every decoder input embedding (token * scale + position), before
             BART's `layernorm_embedding` (Embedding paradigm);
- `memory`:  per decoder layer (N, d), one extra self-attention slot used as both key and value
             (Memory paradigm); token positions are unchanged;
- `values`:  per decoder layer a function V (N, T, d) -> V' applied to the self-attention values
             before the head split (DELLA's low-rank tensor product; never the cross-attention);
- `softmax`: (N, d) added to the final decoder states before the LM head (Softmax paradigm).

The LM head is BART's: tied to the shared embedding, plus `final_logits_bias` (zeros in the
public checkpoints, kept so logits equal `BartForConditionalGeneration`'s). LayerDrop is not
applied (bart-base trains without it). The DELLA-on-BART mapping that uses these hooks is a
reconstruction (reference §5.1): the paper does not give it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import torch
import torch.nn.functional as F
from torch import nn

from della.config import BackboneConfig
from della.models.backbone import can_inspect

if TYPE_CHECKING:  # transformers is imported where a backbone is built: a DAG parse needs none
    from transformers import BartForConditionalGeneration, BartModel

# Per decoder layer: self-attention keys and values (N, H, T_past, hd), then the cross-attention
# keys and values over the encoder states (N, H, S, hd), computed once at the first step.
BartCache = list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]


@dataclass
class DecoderInjection:
    embed: torch.Tensor | None = None
    memory: list[torch.Tensor] | None = None
    values: dict[int, Callable[[torch.Tensor], torch.Tensor]] = field(default_factory=dict)
    softmax: torch.Tensor | None = None


@dataclass
class EncoderOutput:
    hidden: torch.Tensor  # (N, S, d), the last layer's output (BART's encoder ends in a LayerNorm)
    layers: list[torch.Tensor]  # per encoder layer (N, S, d); empty unless asked for


@dataclass
class DecoderOutput:
    hidden: torch.Tensor  # (N, T, d), the last decoder layer's output (before the LM head)
    layers: list[torch.Tensor]  # per decoder layer (N, T, d); empty unless asked for
    cache: BartCache | None


class BartBackbone(nn.Module):
    def __init__(self, bart: BartModel, final_logits_bias: torch.Tensor | None = None):
        super().__init__()
        self.bart = bart
        cfg = bart.config
        if cfg.encoder_attention_heads != cfg.decoder_attention_heads:
            raise ValueError("BART backbone: encoder and decoder must have the same number of heads")
        self.n_embd, self.n_head = cfg.d_model, cfg.decoder_attention_heads
        self.n_encoder_layer, self.n_layer = cfg.encoder_layers, cfg.decoder_layers
        self.n_positions = cfg.max_position_embeddings
        bias = torch.zeros(1, cfg.vocab_size) if final_logits_bias is None else final_logits_bias.detach().clone()
        self.register_buffer("final_logits_bias", bias)

    @classmethod
    def from_hf(cls, model: BartForConditionalGeneration) -> "BartBackbone":
        """Share the weights (and the logits bias) of an HF BART LM."""
        return cls(model.model, model.final_logits_bias)

    @classmethod
    def build(cls, cfg: BackboneConfig, vocab_size: int, *, bos_token_id: int, eos_token_id: int,
              pad_token_id: int) -> "BartBackbone":
        """Pretrained by name or local dir (`cfg.pretrained`), or a small BART from `cfg`: n_layer
        encoder and n_layer decoder layers, FFN 4 * n_embd, `cfg.dropout` on every dropout."""
        from transformers import BartConfig, BartForConditionalGeneration, BartModel

        special_ids = dict(bos_token_id=bos_token_id, eos_token_id=eos_token_id, pad_token_id=pad_token_id)
        if cfg.pretrained:
            model = BartForConditionalGeneration.from_pretrained(cfg.pretrained, attn_implementation="sdpa")
            if model.config.vocab_size != vocab_size:
                model.resize_token_embeddings(vocab_size)
            model.config.update(special_ids)
            return cls.from_hf(model)
        if cfg.n_embd % cfg.n_head:
            raise ValueError(f"backbone.n_embd ({cfg.n_embd}) must be divisible by backbone.n_head ({cfg.n_head})")
        config = BartConfig(vocab_size=vocab_size, d_model=cfg.n_embd, encoder_layers=cfg.n_layer,
                            decoder_layers=cfg.n_layer, encoder_attention_heads=cfg.n_head,
                            decoder_attention_heads=cfg.n_head, encoder_ffn_dim=4 * cfg.n_embd,
                            decoder_ffn_dim=4 * cfg.n_embd, max_position_embeddings=cfg.n_positions,
                            dropout=cfg.dropout, attention_dropout=cfg.dropout, activation_dropout=cfg.dropout,
                            decoder_start_token_id=eos_token_id, forced_eos_token_id=None, **special_ids)
        return cls(BartModel(config))

    @classmethod
    def from_config(cls, config: dict) -> "BartBackbone":
        """The exact shape of a saved backbone (its HF config as a dict); the weights are loaded after."""
        from transformers import BartConfig, BartModel

        return cls(BartModel(BartConfig.from_dict(config)))

    @property
    def wte(self) -> nn.Embedding:
        return self.bart.shared

    # --- encoder ---------------------------------------------------------------------------------
    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
               return_layers: bool = False) -> EncoderOutput:
        """Bidirectional pass over input_ids (N, S); pad keys (mask 0) are hidden."""
        encoder = self.bart.encoder
        S = input_ids.shape[1]
        self._check_length(S, "source")
        x = encoder.embed_tokens(input_ids) + encoder.embed_positions.weight[2:2 + S]  # HF's offset of 2
        x = F.dropout(encoder.layernorm_embedding(x), encoder.dropout, self.training)
        mask = _key_mask(attention_mask)
        layers = []
        for layer in encoder.layers:
            a = self._attention(layer.self_attn, x, x, mask)
            x = layer.self_attn_layer_norm(x + F.dropout(a, layer.dropout, self.training))
            x = layer.final_layer_norm(x + self._ffn(layer, x))
            if return_layers:
                layers.append(x)
        return EncoderOutput(hidden=x, layers=layers)

    # --- decoder ---------------------------------------------------------------------------------
    def decode(self, input_ids: torch.Tensor, encoder_hidden: torch.Tensor,
               encoder_mask: torch.Tensor | None = None, *, cache: BartCache | None = None,
               inject: DecoderInjection | None = None, use_cache: bool = False,
               return_layers: bool = False) -> DecoderOutput:
        """Causal pass over input_ids (N, T), cross-attending to encoder_hidden (N, S, d).
        Right padding is assumed (pad keys then only follow the real tokens, which the causal
        mask already hides)."""
        inject = inject or DecoderInjection()
        decoder = self.bart.decoder
        T = input_ids.shape[1]
        past = 0 if cache is None else cache[0][0].shape[2]
        self._check_length(past + T, "decoder input")
        x = decoder.embed_tokens(input_ids) + decoder.embed_positions.weight[2 + past:2 + past + T]
        if inject.embed is not None:
            x = x + inject.embed[:, None, :]
        x = F.dropout(decoder.layernorm_embedding(x), decoder.dropout, self.training)
        self_mask, is_causal = _causal_mask(past, T, x.device, inject.memory is not None)
        cross_mask = _key_mask(encoder_mask)
        layers, new_cache = [], ([] if use_cache else None)
        for i, layer in enumerate(decoder.layers):
            layer_cache = None if cache is None else cache[i]
            memory = None if inject.memory is None else inject.memory[i]
            a, self_kv = self._self_attention(layer.self_attn, x, self_mask, is_causal, layer_cache, memory,
                                              inject.values.get(i))
            x = layer.self_attn_layer_norm(x + F.dropout(a, layer.dropout, self.training))
            cross_kv = layer_cache[2:] if layer_cache is not None else self._keys_values(layer.encoder_attn,
                                                                                         encoder_hidden)
            a = self._attend(layer.encoder_attn, x, *cross_kv, cross_mask)
            x = layer.encoder_attn_layer_norm(x + F.dropout(a, layer.dropout, self.training))
            x = layer.final_layer_norm(x + self._ffn(layer, x))
            if return_layers:
                layers.append(x)
            if new_cache is not None:
                new_cache.append((*self_kv, *cross_kv))
        return DecoderOutput(hidden=x, layers=layers, cache=new_cache)

    def lm_logits(self, hidden: torch.Tensor, inject: DecoderInjection | None = None,
                  head: nn.Linear | None = None) -> torch.Tensor:
        """BART's tied LM head (+ final_logits_bias), or an untied `head` in its place (a model's
        `tie_lm_head: false`); the Softmax paradigm's add comes first."""
        if inject is not None and inject.softmax is not None:
            hidden = hidden + inject.softmax[:, None, :]
        weight = self.bart.shared.weight if head is None else head.weight
        return hidden @ weight.T + self.final_logits_bias

    # --- pieces ----------------------------------------------------------------------------------
    def _check_length(self, length: int, what: str) -> None:
        if length > self.n_positions:
            raise ValueError(f"{what} of {length} tokens exceeds the BART backbone's {self.n_positions} positions")

    def _ffn(self, layer, x):
        h = F.dropout(layer.activation_fn(layer.fc1(x)), layer.activation_dropout, self.training)
        return F.dropout(layer.fc2(h), layer.dropout, self.training)

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        N, T, d = t.shape
        return t.view(N, T, self.n_head, d // self.n_head).transpose(1, 2)  # (N, H, T, hd)

    def _keys_values(self, attn, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._heads(attn.k_proj(h)), self._heads(attn.v_proj(h))

    def _attend(self, attn, x, k, v, mask, is_causal=False):
        N, T, d = x.shape
        y = F.scaled_dot_product_attention(self._heads(attn.q_proj(x)), k, v, attn_mask=mask, is_causal=is_causal,
                                           dropout_p=attn.dropout if self.training else 0.0, scale=attn.scaling)
        return attn.out_proj(y.transpose(1, 2).reshape(N, T, d))

    def _attention(self, attn, x, context, mask):
        return self._attend(attn, x, *self._keys_values(attn, context), mask)

    def _self_attention(self, attn, x, mask, is_causal, layer_cache, memory, value_fn):
        v = attn.v_proj(x)
        if value_fn is not None:
            v = value_fn(v)
        k, v = self._heads(attn.k_proj(x)), self._heads(v)
        if layer_cache is not None:
            k = torch.cat([layer_cache[0], k], dim=2)
            v = torch.cat([layer_cache[1], v], dim=2)
        kv = (k, v)
        if memory is not None:  # the same vector is the extra key and the extra value
            m = self._heads(memory[:, None, :])
            k, v = torch.cat([m, k], dim=2), torch.cat([m, v], dim=2)
        return self._attend(attn, x, k, v, mask, is_causal), kv


def _key_mask(attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """(N, S) with 0 = pad -> a boolean (N, 1, 1, S) mask (True = may attend), or None."""
    if attention_mask is None or (can_inspect(attention_mask) and bool(attention_mask.all())):
        return None
    return attention_mask.bool()[:, None, None, :]


def _causal_mask(past: int, T: int, device, has_memory: bool) -> tuple[torch.Tensor | None, bool]:
    """A boolean (1, 1, T, [1 +] past + T) mask: query t sees keys up to past + t, and the memory
    slot if any; or (None, is_causal) where SDPA needs none."""
    if not has_memory and past == 0:
        return None, True  # SDPA's built-in causal mask
    if not has_memory and T == 1:
        return None, False  # one new token sees the whole cache
    q = torch.arange(past, past + T, device=device)[:, None]
    allowed = torch.arange(past + T, device=device)[None, :] <= q
    if has_memory:
        allowed = torch.cat([torch.ones(T, 1, dtype=torch.bool, device=device), allowed], dim=-1)
    return allowed[None, None], False
