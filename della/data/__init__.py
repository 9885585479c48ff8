"""Corpora and tokenizers: prepare-data (synthetic | dir | hf), the synthetic grammar, the tokenizer."""
