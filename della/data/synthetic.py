"""A small probabilistic grammar of English sentences with known latent attributes.

Each sentence is generated from four independent, uniformly drawn attributes, and each
attribute shapes the words:

- topic     (sports, food, travel, tech): subjects, objects, topical adjectives and places;
- sentiment (pos, neg): the evaluative verb, the adjective and the closing remark;
- tense     (past, present, future): every verb form, and the time phrase of long sentences;
- length    (short: 6-10 words, long: 11-15 words): long sentences add a place, a time phrase
  and/or a closing remark.

So a latent variable that encodes these four factors explains most of the variation, which is
what the attribute probe of `della evaluate` measures. Generation is deterministic in the seed,
and sentences are unique across all splits, so no test sentence occurs in training.

    >>> corpus = generate_corpus({"train": 3, "valid": 1, "test": 1}, seed=0)
    >>> corpus["train"][0].attributes.keys()
    dict_keys(['topic', 'sentiment', 'tense', 'length'])
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Callable

TOPICS = ("sports", "food", "travel", "tech")
SENTIMENTS = ("pos", "neg")
TENSES = ("past", "present", "future")
LENGTHS = ("short", "long")
ATTRIBUTES = {"topic": TOPICS, "sentiment": SENTIMENTS, "tense": TENSES, "length": LENGTHS}
WORD_RANGE = {"short": (6, 10), "long": (11, 15)}  # inclusive, whitespace-separated words

# Subjects as (phrase, plural?); objects are singular nouns.
SUBJECTS = {
    "sports": [("the coach", False), ("the captain", False), ("the referee", False),
               ("our goalkeeper", False), ("the commentator", False), ("my brother", False),
               ("the fans", True), ("the players", True), ("the reporters", True),
               ("our neighbors", True)],
    "food": [("the chef", False), ("my grandmother", False), ("the critic", False),
             ("the waiter", False), ("my roommate", False), ("the guests", True),
             ("the diners", True), ("my parents", True), ("the students", True)],
    "travel": [("the tour guide", False), ("my sister", False), ("the traveler", False),
               ("our host", False), ("the photographer", False), ("the tourists", True),
               ("the passengers", True), ("my cousins", True), ("the hikers", True)],
    "tech": [("the engineer", False), ("my manager", False), ("the reviewer", False),
             ("the developer", False), ("my father", False), ("the users", True),
             ("the testers", True), ("the customers", True), ("the interns", True)],
}
OBJECTS = {
    "sports": ["match", "final", "game", "season", "race", "training session", "derby",
               "tournament"],
    "food": ["meal", "soup", "pasta", "dessert", "breakfast", "pizza", "curry", "coffee"],
    "travel": ["trip", "hotel", "flight", "beach", "tour", "train ride", "old town", "cruise"],
    "tech": ["laptop", "update", "phone", "app", "keyboard", "website", "camera", "software"],
}
ADJECTIVES = {  # topical + general, per sentiment
    ("sports", "pos"): ["thrilling", "exciting", "memorable"],
    ("sports", "neg"): ["dull", "sloppy", "chaotic"],
    ("food", "pos"): ["delicious", "fresh", "tasty"],
    ("food", "neg"): ["bland", "greasy", "stale"],
    ("travel", "pos"): ["scenic", "relaxing", "charming"],
    ("travel", "neg"): ["crowded", "exhausting", "dirty"],
    ("tech", "pos"): ["fast", "reliable", "elegant"],
    ("tech", "neg"): ["slow", "buggy", "clunky"],
}
GENERAL_ADJECTIVES = {"pos": ["wonderful", "great", "excellent", "lovely"],
                      "neg": ["terrible", "awful", "poor", "disappointing"]}
PLACES = {
    "sports": ["at the stadium", "in the pouring rain", "on the home ground", "at the old arena"],
    "food": ["at the new bistro", "in the small cafe", "at the corner diner", "at the night market"],
    "travel": ["on the coast", "in the mountains", "near the old harbor", "in the capital"],
    "tech": ["at the office", "during the demo", "at the conference", "in the lab"],
}
TIMES = {
    "past": ["last night", "yesterday", "last weekend", "two weeks ago", "last summer"],
    "present": ["every weekend", "these days", "most evenings", "every single time"],
    "future": ["tomorrow", "next week", "this coming weekend", "later tonight", "next summer"],
}
# Verbs as (base, third person singular, past).
EVALUATIVE_VERBS = {
    "pos": [("love", "loves", "loved"), ("enjoy", "enjoys", "enjoyed"),
            ("praise", "praises", "praised"), ("admire", "admires", "admired"),
            ("recommend", "recommends", "recommended")],
    "neg": [("hate", "hates", "hated"), ("dislike", "dislikes", "disliked"),
            ("criticize", "criticizes", "criticized"),
            ("complain about", "complains about", "complained about"),
            ("regret", "regrets", "regretted")],
}
FIND = ("find", "finds", "found")
INTENSIFIERS = ["really", "very", "truly", "quite"]
CODAS = {  # closing remark: (subject, plural?, complement)
    "pos": [("everyone", False, "delighted"), ("the mood", False, "wonderful"),
            ("we", True, "happy")],
    "neg": [("everyone", False, "upset"), ("nobody", False, "happy"),
            ("we", True, "annoyed")],
}


def _verb(forms: tuple[str, str, str], tense: str, plural: bool) -> str:
    base, third, past = forms
    if tense == "past":
        return past
    if tense == "future":
        return f"will {base}"
    return base if plural else third


def _be(tense: str, plural: bool) -> str:
    return {"past": "were" if plural else "was",
            "present": "are" if plural else "is",
            "future": "will be"}[tense]


@dataclass(frozen=True)
class Example:
    text: str
    attributes: dict[str, str]


class Grammar:
    """Draws sentences for given attributes; all randomness comes from the `rng` passed in."""

    def __init__(self, rng: random.Random):
        self.rng = rng

    def sample_attributes(self) -> dict[str, str]:
        return {name: self.rng.choice(values) for name, values in ATTRIBUTES.items()}

    def sentence(self, topic: str, sentiment: str, tense: str, length: str) -> str:
        """One sentence whose word count lies in WORD_RANGE[length]."""
        lo, hi = WORD_RANGE[length]
        for _ in range(1000):
            words = self._draw(topic, sentiment, tense, long=(length == "long"))
            if lo <= len(words.split()) <= hi:
                return words[0].upper() + words[1:]
        raise RuntimeError(f"grammar cannot produce a {length} sentence for {topic}/{sentiment}/{tense}")

    def _adjective(self, topic: str, sentiment: str) -> str:
        """A topical adjective, often with an intensifier, or (30%) a plain general one."""
        if self.rng.random() < 0.3:
            return self.rng.choice(GENERAL_ADJECTIVES[sentiment])
        adj = self.rng.choice(ADJECTIVES[topic, sentiment])
        return f"{self.rng.choice(INTENSIFIERS)} {adj}" if self.rng.random() < 0.5 else adj

    def _draw(self, topic: str, sentiment: str, tense: str, long: bool) -> str:
        rng = self.rng
        subject, plural = rng.choice(SUBJECTS[topic])
        obj = rng.choice(OBJECTS[topic])
        adj = self._adjective(topic, sentiment)
        frame = rng.randrange(3)
        if frame == 0:  # the fans loved the thrilling final
            verb = _verb(rng.choice(EVALUATIVE_VERBS[sentiment]), tense, plural)
            core = f"{subject} {verb} the {adj} {obj}"
        elif frame == 1:  # the soup was really bland for the guests
            core = f"the {obj} {_be(tense, False)} {adj} for {subject}"
        else:  # the users found the app truly slow
            core = f"{subject} {_verb(FIND, tense, plural)} the {obj} {adj}"
        if long:
            extras = [e for e in ("place", "time", "coda") if rng.random() < 0.7] or ["time"]
            if "place" in extras:
                core += " " + rng.choice(PLACES[topic])
            if "time" in extras:
                core += " " + rng.choice(TIMES[tense])
            if "coda" in extras:
                who, who_plural, feeling = rng.choice(CODAS[sentiment])
                core += f", and {who} {_be(tense, who_plural)} {feeling}"
        return core + "."


def generate_corpus(sizes: dict[str, int], seed: int) -> dict[str, list[Example]]:
    """Unique sentences for each split (in the order of `sizes`), deterministic in `seed`."""
    grammar = Grammar(random.Random(f"della-synthetic-{seed}"))

    def draw() -> tuple[str, Example]:
        attrs = grammar.sample_attributes()
        text = grammar.sentence(**attrs)
        return text, Example(text, attrs)

    return distinct_splits(sizes, draw)


def distinct_splits(sizes: dict[str, int], draw: Callable[[], tuple[str, Any]]) -> dict[str, list[Any]]:
    """n examples per split (in the order of `sizes`) whose texts are distinct across all splits;
    draw() -> (text, example). At most 50 n + 1000 draws per split."""
    seen: set[str] = set()
    corpus: dict[str, list[Any]] = {}
    for split, n in sizes.items():
        if n < 1:
            raise ValueError(f"synthetic split {split!r}: size must be >= 1, got {n}")
        examples: list[Any] = []
        for _ in range(50 * n + 1000):
            if len(examples) == n:
                break
            text, example = draw()
            if text not in seen:
                seen.add(text)
                examples.append(example)
        if len(examples) < n:
            raise ValueError(f"synthetic split {split!r}: could not draw {n} distinct sentences "
                             f"(got {len(examples)}); ask for fewer")
        corpus[split] = examples
    return corpus


def describe() -> dict[str, Any]:
    """The grammar's attribute values, for prepare.json."""
    return {"attributes": {k: list(v) for k, v in ATTRIBUTES.items()},
            "word_range": {k: list(v) for k, v in WORD_RANGE.items()}}


# --- conditional task: a prompt that fixes some attributes -> a sentence that realises them ----------
PROMPT_WORDS = {  # how the prompt names each fixed attribute value
    "topic": {t: f"about {t}" for t in TOPICS},
    "sentiment": {"pos": "positive", "neg": "negative"},
    "tense": {t: f"in the {t} tense" for t in TENSES},
    "length": {"short": "short", "long": "long"},
}


@dataclass(frozen=True)
class ConditionalExample:
    source: str
    target: str
    attributes: dict[str, Any]  # the four attributes of the target and the names of the fixed ones


def prompt(fixed: dict[str, str]) -> str:
    """'Write a short negative sentence about food in the past tense.' (only the fixed parts)."""
    words = PROMPT_WORDS
    adjectives = [words[k][fixed[k]] for k in ("length", "sentiment") if k in fixed]
    phrases = [words[k][fixed[k]] for k in ("topic", "tense") if k in fixed]
    return " ".join(["Write a", *adjectives, "sentence", *phrases]) + "."


def generate_conditional_corpus(sizes: dict[str, int], seed: int) -> dict[str, list[ConditionalExample]]:
    """Pairs (prompt, sentence): each attribute is fixed by the prompt with probability 1/2 (at
    least one is), the others are left to the model, so one prompt has many right answers.
    Targets are unique across splits; deterministic in `seed`, independent of `generate_corpus`."""
    rng = random.Random(f"della-synthetic-conditional-{seed}")
    grammar = Grammar(rng)

    def draw() -> tuple[str, ConditionalExample]:
        attrs = grammar.sample_attributes()
        fixed = [name for name in ATTRIBUTES if rng.random() < 0.5] or [rng.choice(list(ATTRIBUTES))]
        target = grammar.sentence(**attrs)
        source = prompt({name: attrs[name] for name in fixed})
        return target, ConditionalExample(source, target, {**attrs, "fixed": fixed})

    return distinct_splits(sizes, draw)
