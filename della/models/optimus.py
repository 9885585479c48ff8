"""Optimus (Li et al., 2020) as a run: a BERT encoder, the shared GPT-2 decoder, one z.

Encoder (reference §9.1): a Hugging Face `BertModel`; pooled = tanh(W_p h_[CLS] + b_p) (BERT's own
pooler over the first token, which here is `<s>`), then one Linear **without bias** to [μ; log σ²].
Prior N(0, I). Decoder (reference §9.3, Optimus's `latent_as_gpt_emb` + `latent_as_gpt_memory`, both
on, as Optimus trains): W_e z added to every input embedding, and W_m z split per layer into one
attention slot that is both key and value, given to each layer as its *past*, so the token positions
become 1..T exactly as in Optimus (the `memory` baseline keeps 0..T-1).

Tokenization: the encoder reads the project's ids (one tokenizer per dataset), never a BERT
WordPiece tokenization. So:
- `encoder_pretrained: null` (default): a BERT built from scratch, sized like the backbone (layers,
  width, heads, positions, dropout), with its own word-embedding table over the project vocabulary;
- `encoder_pretrained: NAME_OR_DIR`: a pretrained BERT's Transformer layers, position and type
  embeddings and pooler, with a **new** word-embedding table over the project vocabulary (BERT's
  WordPiece rows mean nothing for these ids). The checkpoint must stay loadable (name or local dir)
  when the trained model is loaded; a non-BERT checkpoint is an error.
The training recipe is the project's (della/train.py), as for every other model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from della.models.backbone import Backbone, Injection
from della.models.base import LatentModel, Vocab
from della.models.configs import OptimusConfig
from della.models.single_latent import SingleLatentVAE

if TYPE_CHECKING:  # transformers is imported where the encoder is built: a DAG parse needs none
    from transformers import BertModel


def scratch_bert(backbone: Backbone, vocab: Vocab) -> BertModel:
    from transformers import BertConfig, BertModel

    cfg = backbone.gpt2.config
    return BertModel(BertConfig(vocab_size=vocab.size, hidden_size=cfg.n_embd, num_hidden_layers=cfg.n_layer,
                                num_attention_heads=cfg.n_head, intermediate_size=4 * cfg.n_embd,
                                max_position_embeddings=cfg.n_positions, hidden_dropout_prob=cfg.resid_pdrop,
                                attention_probs_dropout_prob=cfg.attn_pdrop, pad_token_id=vocab.pad_id))


def pretrained_bert(name_or_dir: str, vocab: Vocab, d_model: int) -> BertModel:
    """A pretrained BERT whose word embeddings are replaced by a fresh table over the project vocab."""
    from transformers import AutoConfig, BertModel

    key = "model_args.encoder_pretrained"
    try:
        model_type = AutoConfig.from_pretrained(name_or_dir).model_type
    except (OSError, ValueError) as err:
        raise ValueError(f"{key} = {name_or_dir!r}: cannot load it (no network here: pass a local "
                         f"directory): {err}") from err
    if model_type != "bert":
        raise ValueError(f"{key} = {name_or_dir!r}: a {model_type!r} checkpoint; Optimus needs a BERT encoder")
    bert = BertModel.from_pretrained(name_or_dir)
    if bert.config.hidden_size != d_model:  # della/evaluate.py sizes the encoder features by the decoder
        raise ValueError(f"{key} = {name_or_dir!r}: hidden size {bert.config.hidden_size} differs from the "
                         f"GPT-2 backbone's n_embd = {d_model}; pair BERT and GPT-2 of the same width")
    words = nn.Embedding(vocab.size, bert.config.hidden_size, padding_idx=vocab.pad_id)
    nn.init.normal_(words.weight, std=bert.config.initializer_range)
    bert.set_input_embeddings(words)
    bert.config.update({"vocab_size": vocab.size, "pad_token_id": vocab.pad_id})
    return bert


class OptimusVAE(SingleLatentVAE):
    registry_name = "optimus"

    def __init__(self, config: OptimusConfig, backbone: Backbone, vocab: Vocab, conditional: bool = False):
        # skip SingleLatentVAE.__init__ (its pooling and biased head); inherit its posterior maths
        LatentModel.__init__(self, config, backbone, vocab, conditional)
        self.latent_size = config.latent_size
        if config.encoder_pretrained:
            self.encoder = pretrained_bert(config.encoder_pretrained, vocab, backbone.n_embd)
        else:
            self.encoder = scratch_bert(backbone, vocab)
        self.to_posterior = nn.Linear(self.encoder.config.hidden_size, 2 * self.latent_size, bias=False)
        nn.init.normal_(self.to_posterior.weight, std=0.02)
        self.latent_to_embedding = self.latent_projection(backbone.n_embd)
        self.latent_to_memory = self.latent_projection(backbone.n_layer * backbone.n_embd)

    def encode(self, input_ids, mask, condition=None):
        limit = self.encoder.config.max_position_embeddings
        if input_ids.shape[1] > limit:
            raise ValueError(f"sequence of {input_ids.shape[1]} tokens exceeds the BERT encoder's {limit} "
                             f"positions (lower train.max_length)")
        out = self.encoder(input_ids=input_ids, attention_mask=mask.long())
        return out.pooler_output[:, None, :]  # (B, 1, d_bert)

    def memory_cache(self, z: torch.Tensor):
        """Per layer (m_l, m_l) shaped as a one-position past (N, H, 1, hd): key = value = m_l."""
        N, H = z.shape[0], self.backbone.n_head
        m = self.latent_to_memory(z[:, 0]).view(N, self.backbone.n_layer, H, 1, -1)
        return [(m[:, layer], m[:, layer]) for layer in range(self.backbone.n_layer)]

    def decode(self, input_ids, z, cache=None, use_cache=False, condition=None):
        """The memory enters as the first call's past (a later call's cache already holds it)."""
        if cache is None:
            if input_ids.shape[1] + 1 > self.backbone.n_positions:
                raise ValueError(f"a sequence of {input_ids.shape[1]} tokens plus Optimus's memory slot exceeds "
                                 f"backbone.n_positions = {self.backbone.n_positions}; it must exceed train.max_length")
            cache = self.memory_cache(z)
        # a causal pass reads only the mask's device (to build the offset causal mask there)
        out = self.backbone(input_ids, torch.ones_like(input_ids), causal=True, cache=cache,
                            inject=Injection(embed=self.latent_to_embedding(z[:, 0])), use_cache=use_cache)
        return self.output_logits(out.hidden, z), out.cache
