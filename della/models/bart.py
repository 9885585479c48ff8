"""The plain BART (Bart-base fine-tuned, no latent) and the BART versions of Embed, Memory, Softmax and DELLA.

The models of the paper's BART-base rows (Table 2's CNN/DM block, Table 9's Quora block), all
conditional (source -> target). `build_model` takes a registered model's BART version when
`backbone.kind` is bart (its `bart=` class in della/models/catalog.py), so `embed`, `memory`,
`softmax` and `della` keep their names and model_args. Each BART version is its GPT-2 class with a
mixin in front that replaces only what touches the backbone: the encoder passes, the decoder pass
with its hooks, and the LM head; the latent heads (posterior, prior, recurrence, KL, log q, prior sampling) are the GPT-2 class's own.

Layout (della/data/conditional.py, layout bart): the decoder sequence is </s> <s> target </s> (HF's
decoder start, then BART's labels) with target_start = 2, so the trivial <s> is never predicted;
Condition.ids = <s> source </s> is the encoder input the decoder cross-attends to.

- Condition c: the BART encoder over the source, pooled by the model's `pool` kind: its last layer
  for Embed/Memory/Softmax, encoder layer l for DELLA's latent layer l (reference §5.1), by the
  posterior's own pooling of layer l, as the GPT-2 DELLA CVAE. That one
  pass also feeds the decoder's cross-attention (`encode_source`: once per batch, K samples included).
- Posterior features x: the same encoder (shared weights, bidirectional) over <s> source </s> target
  </s>, pooled the same way. Not the target alone: the GPT-2 classes' posterior heads read x only
  (c feeds the prior), so, as in the GPT-2 CVAE and the official code (reference §5), the source
  reaches q(z | x, c) through the encoder's input. Where source + target exceed the encoder's
  positions, the source keeps its first tokens (the target is always whole).
- Decoder hooks (BartBackbone): Embed adds W_e z to every decoder input embedding; Memory adds one
  self-attention slot per decoder layer; Softmax adds W_s z to the final decoder states; DELLA fuses
  z_l into the self-attention values of decoder layer l (Eq. 9), never the cross-attention.
- The LM head is BART's tied head plus final_logits_bias (`tie_lm_head: false`: a fresh head, the
  bias kept).

DELLA on BART is a reconstruction (reference §5.1): the paper runs it but gives no mapping, and the
official code has none.
"""

from __future__ import annotations

import dataclasses
import functools

import torch

from della.models.backbone import can_inspect
from della.models.bart_backbone import BartBackbone, DecoderInjection, EncoderOutput
from della.models.base import Condition, LatentModel
from della.models.della import Della
from della.models.embed import EmbedVAE
from della.models.gpt2 import GPT2LM
from della.models.memory import MemoryVAE
from della.models.softmax import SoftmaxVAE


class BartDecoding(LatentModel):
    """Mixin: the decoder pass over BART, cross-attending to the encoder over the source."""

    def __init__(self, config, backbone, vocab, conditional: bool = False):
        if not isinstance(backbone, BartBackbone):
            raise ValueError(f"model {self.registry_name!r}: its BART version needs backbone.kind = bart")
        if not conditional:
            raise ValueError(f"model {self.registry_name!r} on backbone.kind = bart is an encoder-decoder: "
                             "it needs a conditional task (a source for its encoder)")
        super().__init__(config, backbone, vocab, conditional=conditional)

    def encode_source(self, condition):
        """One encoder pass over the source: its output for the cross-attention and, for a latent
        model, the condition features c pooled from it."""
        if condition is None or condition.source_states is not None:
            return condition
        out = self.backbone.encode(condition.ids, condition.mask, return_layers=True)
        return dataclasses.replace(condition, source_states=out.hidden,
                                   features=self.source_features(out, condition.mask))

    def source_features(self, out: EncoderOutput, mask: torch.Tensor) -> torch.Tensor | None:
        return None  # the plain BART has no latent, so no condition features

    def decode(self, input_ids, z, cache=None, use_cache=False, condition=None):
        """The encoder's output over the source enters on the first step; later steps find its keys
        and values in the cache."""
        self.check_condition(condition)
        encoder_hidden = None if cache is not None else self.encode_source(condition).source_states
        inject = self.decoder_injection(z)
        out = self.backbone.decode(input_ids, encoder_hidden, condition.mask, cache=cache, inject=inject,
                                   use_cache=use_cache)
        return self.backbone.lm_logits(out.hidden, inject, head=self.lm_head), out.cache

    def output_logits(self, hidden, z):
        return self.backbone.lm_logits(hidden, self.decoder_injection(z), head=self.lm_head)

    def decoder_injection(self, z: torch.Tensor) -> DecoderInjection:
        """The GPT-2 model's embed / memory hooks, which BART's decoder takes as they are."""
        inject = self.injection(z)
        if inject.qkv:
            raise NotImplementedError(f"model {self.registry_name!r}: GPT-2 QKV hooks have no BART form")
        return DecoderInjection(embed=inject.embed, memory=inject.memory)


class BartEncoding(BartDecoding):
    """Mixin: posterior features and condition from the BART encoder (module docstring)."""

    def encode(self, input_ids, mask, condition=None):
        self.check_condition(condition)
        ids, pair_mask = self.source_and_target(input_ids, mask, condition)
        return torch.cat([self.encoder_features(self.pool, ids, pair_mask), self.encode_condition(condition)], -1)

    def encode_condition(self, condition: Condition) -> torch.Tensor:
        return self.encode_source(condition).features

    def source_features(self, out, mask):
        return self.pooled(self.condition_pool, out, mask)

    def encoder_features(self, pools, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, G, d): the encoder pass over ids, pooled per latent group."""
        return self.pooled(pools, self.backbone.encode(ids, mask, return_layers=True), mask)

    def pooled(self, pools, out: EncoderOutput, mask: torch.Tensor) -> torch.Tensor:
        """(B, G, d): an encoder pass pooled per latent group."""
        raise NotImplementedError

    def source_and_target(self, input_ids, mask, condition: Condition) -> tuple[torch.Tensor, torch.Tensor]:
        """<s> source </s> target </s>, right-padded: the condition's tokens, then the decoder
        sequence's from target_start on; the source keeps only its first tokens where the pair
        exceeds the encoder's positions. Where reading the longest pair's length would wait for the GPU
        (or break a compiled graph) the width is the widest a pair can be: more pads, all masked."""
        target = mask * (torch.arange(mask.shape[1], device=mask.device) >= condition.target_start[:, None])
        room = self.backbone.n_positions - target.sum(1, keepdim=True)
        source = condition.mask * (torch.arange(condition.mask.shape[1], device=mask.device) < room)
        keep = torch.cat([source, target], 1).long()
        order = torch.argsort(keep, dim=1, descending=True, stable=True)  # kept tokens first, in order
        length = int(keep.sum(1).max()) if can_inspect(keep) else min(keep.shape[1], self.backbone.n_positions)
        ids = torch.cat([condition.ids, input_ids], 1).gather(1, order[:, :length])
        return ids, keep.gather(1, order[:, :length])


class BartSingleLatent(BartEncoding):
    """Mixin: x and c pooled from the encoder's last layer."""

    def pooled(self, pool, out, mask):
        return pool(out.hidden, mask)[:, None, :]


class BartLM(BartDecoding, GPT2LM):
    registry_name = "bart"


class BartEmbedVAE(BartSingleLatent, EmbedVAE):
    pass


class BartMemoryVAE(BartSingleLatent, MemoryVAE):
    pass


class BartSoftmaxVAE(BartSingleLatent, SoftmaxVAE):
    def decoder_injection(self, z):
        return DecoderInjection(softmax=self.latent_to_hidden(z[:, 0]))


class BartDella(BartEncoding, Della):
    """Encoder layer l gives x^(l) and c_l; decoder layer l's self-attention values take z_l."""

    def __init__(self, config, backbone, vocab, conditional: bool = False):
        super().__init__(config, backbone, vocab, conditional=conditional)
        if backbone.n_encoder_layer != backbone.n_layer:
            raise ValueError(f"model 'della' on BART pairs encoder layer l with decoder layer l: the backbone has "
                             f"{backbone.n_encoder_layer} encoder and {backbone.n_layer} decoder layers")

    def source_features(self, out, mask):
        return self.pooled(self.pool, out, mask)  # x^(l)'s pooling, as the GPT-2 DELLA CVAE (della.py)

    def pooled(self, pools, out, mask):
        pool_mask = mask if self.config.pool_mask else None
        return torch.stack([pool(out.layers[l], pool_mask) for pool, l in zip(pools, self.latent_layers)], 1)

    def decoder_injection(self, z):
        factors, maps = self.layer_factors(z)
        return DecoderInjection(values={layer: functools.partial(self.fusion.values, i, factor=factors[i], maps=maps)
                                        for i, layer in enumerate(self.layers)})
