"""The model registry: every model declares its name, model_args, paper name and classes once.

The registry imports none of the model modules. The package registers its models in
`della/models/catalog.py` (imported by `della/models/__init__.py`) by name, config dataclass
(della/models/configs.py) and the dotted path of its class on each backbone kind::

    register_model("embed", SingleLatentConfig, paper_name="Embed",
                   gpt2="della.models.embed:EmbedVAE", bart="della.models.bart:BartEmbedVAE")

so the workflow checks a config when it builds the DAG without importing torch (every dry run, and
every Slurm job's re-parse of the Snakefile); a class is imported when a model is built.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import importlib.util
from dataclasses import dataclass
from typing import Any

from della.registry import Registry

BACKBONE_KINDS = ("gpt2", "bart")


@dataclass(frozen=True)
class ModelSpec:
    """A registered model: what the workflow and the tables need, and where its classes are."""

    name: str
    config_class: type  # its model_args dataclass
    classes: dict[str, str]  # backbone kind -> "package.module:Class" (only the kinds it runs on)
    paper_name: str | None  # the paper's row label (GPT-2, DELLA, ...): default label, paper row
    has_latent: bool  # False for the plain LMs
    supports_condition: bool  # has a conditional (CVAE) version

    def runs_on(self, kind: str) -> bool:
        return kind in self.classes

    def make_config(self, model_args: dict[str, Any], where: str) -> Any:
        """Its config dataclass built from `model_args`; a ValueError starting with `where` names an
        unknown key (with the closest valid one) or a bad value."""
        valid = [f.name for f in dataclasses.fields(self.config_class)]
        for key in model_args:
            if key not in valid:
                close = difflib.get_close_matches(key, valid, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ValueError(f"{where}: unknown key {key!r}; valid keys: {valid}{hint}")
        try:
            return self.config_class(**model_args)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{where}: {err}") from None

    def model_class(self, kind: str) -> type:
        """Its class on a backbone of `kind`, imported now."""
        if not self.runs_on(kind):
            if kind == "bart":
                with_bart = [name for name in MODELS.names() if MODELS.get(name).runs_on("bart")]
                raise ValueError(f"model {self.name!r} has no version on backbone.kind = bart; models with one: "
                                 f"{with_bart}")
            raise ValueError(f"model {self.name!r} runs on BART only: it needs backbone.kind = bart")
        module, cls = self.classes[kind].split(":")
        return getattr(importlib.import_module(module), cls)


MODELS: Registry[ModelSpec] = Registry("model")


def register_model(name: str, config_class: type, *, paper_name: str | None = None, has_latent: bool = True,
                   supports_condition: bool = True, **classes: str) -> ModelSpec:
    """Register model `name`: its model_args dataclass and, keyed by backbone kind (`gpt2=`, `bart=`),
    its class ("module:Class") on each kind it runs on. Registering a name twice raises ValueError."""
    unknown = sorted(set(classes) - set(BACKBONE_KINDS))
    if unknown or not classes:
        raise ValueError(f"model {name!r}: give its class on one or more backbone kinds {BACKBONE_KINDS}"
                         + (f", not {unknown}" if unknown else ""))
    for kind, path in classes.items():
        check_class_path(f"model {name!r}, {kind}={path!r}", path)
    spec = ModelSpec(name, config_class, classes, paper_name, has_latent, supports_condition)
    return MODELS.register(name)(spec)


def check_class_path(where: str, path: str) -> None:
    """A "package.module:Class" whose module exists, found without running it (so a typo fails when
    the DAG is built, not in the first training job)."""
    module, _, cls = path.partition(":")
    if not (module and cls.isidentifier()):
        raise ValueError(f"{where}: expected 'package.module:Class'")
    try:
        found = importlib.util.find_spec(module)
    except ModuleNotFoundError:  # a missing parent package
        found = None
    if found is None:
        raise ValueError(f"{where}: no module {module!r}")


def runs_on(name: str, kind: str) -> bool:
    """Whether registered model `name` has a version on a backbone of `kind` (gpt2 | bart)."""
    return MODELS.get(name).runs_on(kind)


def paper_name(model: str) -> str | None:
    """The paper's name of a registered model, None when it declares none."""
    return MODELS.get(model).paper_name


def default_label(model: str) -> str:
    """A registered model's row label when the config gives none: the paper's name, else the registry name."""
    return paper_name(model) or model


def paper_row(entry: dict) -> str | None:
    """The paper's row a workflow model entry reproduces: its `paper_row`, else its model's paper
    name; None when it has none (`paper_row: false`, or a model the paper does not name)."""
    row = paper_name(entry["model"]) if entry.get("paper_row") is None else entry["paper_row"]
    return row or None


def check_model_name(model: str, where: str) -> None:
    """Raise a ValueError naming `where` (a config key) and the registered models if `model` is unknown."""
    try:
        MODELS.get(model)
    except KeyError as err:
        raise ValueError(f"{where}: {err.args[0]}") from None
