"""The BART encoder-decoder: Hugging Face `BartModel`'s weight names and initialisation in a module
tree of our own, run by our own forward.

The second backbone beside the GPT-2 one (`della/models/backbone.py`), for the conditional tasks
the paper runs on BART-base (CNN/DM, Quora). A pretrained BART (`facebook/bart-base` by name or a
local dir) is loaded by transformers and its weights assigned to our modules; a BART built from a
config imports no transformers (a job's start-up is mostly imports). Each latent-injection paradigm
gets its hook into the decoder:

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

import dataclasses
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from della.config import BackboneConfig
from della.models.backbone import ACTIVATIONS, can_inspect, check_activation, hf_config_fields

if TYPE_CHECKING:  # transformers is imported only to load a pretrained BART
    from transformers import BartForConditionalGeneration

@dataclass
class BartConfig:
    """The shape of a BART, under the keys (and defaults) of Hugging Face's `BartConfig`, so `to_dict()`
    loads there and a checkpoint's HF dict loads here."""

    vocab_size: int = 50265
    max_position_embeddings: int = 1024
    d_model: int = 1024
    encoder_layers: int = 12
    decoder_layers: int = 12
    encoder_attention_heads: int = 16
    decoder_attention_heads: int = 16
    encoder_ffn_dim: int = 4096
    decoder_ffn_dim: int = 4096
    activation_function: str = "gelu"
    dropout: float = 0.1
    attention_dropout: float = 0.0
    activation_dropout: float = 0.0
    init_std: float = 0.02
    scale_embedding: bool = False
    pad_token_id: int | None = 1
    bos_token_id: int | None = 0
    eos_token_id: int | None = 2
    decoder_start_token_id: int | None = 2
    forced_eos_token_id: int | None = 2

    def __post_init__(self):
        if self.d_model % self.encoder_attention_heads or self.d_model % self.decoder_attention_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by the number of attention heads "
                             f"({self.encoder_attention_heads}, {self.decoder_attention_heads})")
        check_activation(self.activation_function)

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> "BartConfig":
        """From an HF BART config dict (a checkpoint's, or config.json)."""
        return cls(**hf_config_fields(cls, config, "bart"))

    def to_dict(self) -> dict[str, Any]:
        return {"model_type": "bart", "is_encoder_decoder": True, **dataclasses.asdict(self)}


class ScaledEmbedding(nn.Embedding):
    """Token embeddings times `embed_scale` (sqrt(d_model) when config.scale_embedding)."""

    def __init__(self, n: int, d: int, padding_idx: int | None, embed_scale: float):
        super().__init__(n, d, padding_idx)
        self.embed_scale = embed_scale

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return super().forward(ids) * self.embed_scale


class BartAttention(nn.Module):
    def __init__(self, d: int, n_head: int, dropout: float):
        super().__init__()
        self.k_proj, self.v_proj, self.q_proj, self.out_proj = (nn.Linear(d, d) for _ in range(4))
        self.dropout = dropout
        self.scaling = (d // n_head) ** -0.5


class BartLayer(nn.Module):
    """An encoder layer (self-attention, FFN), or with `cross` a decoder layer (self-attention,
    cross-attention over the encoder, FFN); post-norm. Submodules in HF's registration order."""

    def __init__(self, config: BartConfig, cross: bool):
        super().__init__()
        d = config.d_model
        heads, ffn = ((config.decoder_attention_heads, config.decoder_ffn_dim) if cross
                      else (config.encoder_attention_heads, config.encoder_ffn_dim))
        self.self_attn = BartAttention(d, heads, config.attention_dropout)
        self.self_attn_layer_norm = nn.LayerNorm(d)
        self.dropout = config.dropout
        self.activation_fn = ACTIVATIONS[config.activation_function]
        self.activation_dropout = config.activation_dropout
        if cross:
            self.encoder_attn = BartAttention(d, heads, config.attention_dropout)
            self.encoder_attn_layer_norm = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, ffn)
        self.fc2 = nn.Linear(ffn, d)
        self.final_layer_norm = nn.LayerNorm(d)


class BartStack(nn.Module):
    """The encoder or (`decoder`) the decoder: token and learned position embeddings (BART offsets
    positions by 2), the layers, a LayerNorm over the embeddings. Initialised as it is built, as
    HF's sub-models are (their `post_init`)."""

    def __init__(self, config: BartConfig, decoder: bool):
        super().__init__()
        d = config.d_model
        self.dropout = config.dropout
        scale = math.sqrt(d) if config.scale_embedding else 1.0
        self.embed_tokens = ScaledEmbedding(config.vocab_size, d, config.pad_token_id, scale)  # tied by BartModel
        self.embed_positions = nn.Embedding(config.max_position_embeddings + 2, d)
        n = config.decoder_layers if decoder else config.encoder_layers
        self.layers = nn.ModuleList(BartLayer(config, cross=decoder) for _ in range(n))
        self.layernorm_embedding = nn.LayerNorm(d)
        init_weights(self, config.init_std)


class BartModel(nn.Module):
    """The shared token embedding, the encoder and the decoder (HF's `BartModel` weights)."""

    def __init__(self, config: BartConfig):
        super().__init__()
        self.config = config
        scale = math.sqrt(config.d_model) if config.scale_embedding else 1.0
        self.shared = ScaledEmbedding(config.vocab_size, config.d_model, config.pad_token_id, scale)
        self.encoder = BartStack(config, decoder=False)
        self.decoder = BartStack(config, decoder=True)
        init_weights(self.shared, config.init_std)
        self.encoder.embed_tokens = self.decoder.embed_tokens = self.shared  # tied, as HF ties them


def init_weights(module: nn.Module, std: float) -> None:
    """transformers 5's BART initialisation, draw for draw: N(0, std) for every Linear and Embedding
    weight (an Embedding's padding row then 0), zero biases, unit LayerNorms, over the modules
    children first. With the modules' own constructor draws before it, the same seed gives HF's weights."""
    for child in module.children():
        init_weights(child, std)
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=std)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)
    if isinstance(module, nn.Embedding) and module.padding_idx is not None:
        with torch.no_grad():
            module.weight[module.padding_idx].zero_()
    if isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


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
        """Our BART sharing the weights (and the logits bias) of an HF BART LM."""
        with torch.device("meta"):  # no memory and no random draws for weights about to be replaced
            bart = BartModel(BartConfig.from_dict(model.config.to_dict()))
        bart.load_state_dict(model.model.state_dict(), strict=True, assign=True)
        return cls(bart, model.final_logits_bias)

    @classmethod
    def build(cls, cfg: BackboneConfig, vocab_size: int, *, bos_token_id: int, eos_token_id: int,
              pad_token_id: int) -> "BartBackbone":
        """Pretrained by name or local dir (`cfg.pretrained`, loaded by transformers, the embeddings
        resized by it when the vocabulary differs), or a small BART from `cfg`: n_layer encoder and
        n_layer decoder layers, FFN 4 * n_embd, `cfg.dropout` on every dropout."""
        special_ids = dict(bos_token_id=bos_token_id, eos_token_id=eos_token_id, pad_token_id=pad_token_id)
        if cfg.pretrained:
            from transformers import BartForConditionalGeneration

            model = BartForConditionalGeneration.from_pretrained(cfg.pretrained)
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
