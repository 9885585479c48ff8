"""`python -m della models`: the model registry, one block per model.

Per model: its registry name, the first line of its module's docstring, the paper's name for it
when its registration gives one (`paper_name`), and its `model_args` keys with their defaults (the
fields of its config dataclass), i.e. what a `models:` entry of the workflow config may set.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import sys


def describe(name: str) -> str:
    """The text block of one registered model."""
    from della.models import MODELS

    spec = MODELS.get(name)
    cls = spec.model_class(next(iter(spec.classes)))  # the module of its first backbone kind describes it
    doc = inspect.getdoc(sys.modules[cls.__module__]) or inspect.getdoc(cls) or "(no description)"
    lines = [f"{name}: {first_sentence(doc)}"]
    if spec.paper_name:
        lines.append(f"  paper name: {spec.paper_name}")
    fields = dataclasses.fields(spec.config_class)
    lines.append("  model_args:" if fields else "  model_args: (none)")
    lines += [f"    {f.name} = {_default(f)!r}" for f in fields]
    return "\n".join(lines)


def first_sentence(doc: str) -> str:
    """The first sentence of a docstring's first paragraph, on one line."""
    paragraph = " ".join(doc.strip().split("\n\n")[0].split())
    end = paragraph.find(". ")
    return paragraph if end < 0 else paragraph[: end + 1]


def _default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return "(required)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = "list the registered models, their descriptions and model_args defaults"
    p.add_argument("names", nargs="*", help="only these models (default: all)")


def run(args: argparse.Namespace) -> None:
    from della.models import MODELS

    print("\n\n".join(describe(name) for name in args.names or MODELS.names()))
