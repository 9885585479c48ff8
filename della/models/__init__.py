"""Model registry: `MODELS.get(name)`. Adding a baseline = one module in this package.

Every module of the package is imported here, so a new file that registers its class with
`@MODELS.register("name")` is found without an import line. A model class may declare
`paper_name` (what the paper's tables call it, e.g. "GPT-2"): it is the model's default row label
and the row it is compared with in the paper's published numbers (della/paper/).
"""

import importlib
import pkgutil

from della.models.base import MODELS, LatentModel, LossOutput, Posterior, Vocab, build_model

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")


def paper_name(model: str) -> str | None:
    """The paper's name of a registered model (its `paper_name`), None when it declares none."""
    return getattr(MODELS.get(model), "paper_name", None)


def default_label(model: str) -> str:
    """A registered model's row label when the config gives none: the paper's name, else the registry name."""
    return paper_name(model) or model


def check_model_name(model: str, where: str) -> None:
    """Raise a ValueError naming `where` (a config key) and the registered models if `model` is unknown."""
    try:
        MODELS.get(model)
    except KeyError as err:
        raise ValueError(f"{where}: {err.args[0]}") from None


__all__ = ["MODELS", "LatentModel", "LossOutput", "Posterior", "Vocab", "build_model",
           "check_model_name", "default_label", "paper_name"]
