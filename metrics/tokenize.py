"""Word tokenisers of the n-gram metrics (BLEU, Self-BLEU, Dist, JS, CND).

The default, `whitespace`, is `str.split()`: it needs no data, and pre-tokenised corpora (PTB's
`<unk>` and `N`, Yahoo's `_UNK` and `n't`) keep exactly their tokens. `13a` is sacrebleu's
mteval-v13a tokenizer, for raw text (it splits `<unk>` into `< unk >`). `nltk` is
`nltk.word_tokenize`, Texygen's choice; it needs NLTK's punkt data, which this project does not
ship, and raises ValueError without it.
"""

from __future__ import annotations

from typing import Callable, Sequence


def get_tokenizer(name: str, lowercase: bool = False) -> Callable[[str], list[str]]:
    """A function str -> tokens for the tokenizer `name` (see the module docstring)."""
    if name == "whitespace":
        split = str.split
    elif name == "13a":
        from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

        tok13a = Tokenizer13a()

        def split(text: str) -> list[str]:
            return tok13a(text).split()
    elif name == "nltk":
        split = _nltk_word_tokenize()
    else:
        raise ValueError(f"unknown tokenizer {name!r}; expected whitespace, 13a or nltk")
    if lowercase:
        return lambda text: split(text.lower())
    return split


def tokenize_all(texts: Sequence[str], name: str, lowercase: bool = False) -> list[list[str]]:
    split = get_tokenizer(name, lowercase)
    return [split(text) for text in texts]


def _nltk_word_tokenize() -> Callable[[str], list[str]]:
    import nltk

    try:
        nltk.word_tokenize("probe.")
    except LookupError as err:
        raise ValueError("tokenizer 'nltk' needs NLTK's punkt_tab data, which is not installed "
                         "(this project works offline and ships none); use tokenizer=whitespace "
                         f"or 13a. NLTK said: {str(err).strip().splitlines()[0]}") from None
    return nltk.word_tokenize
