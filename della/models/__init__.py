"""Model registry: `MODELS.get(name)` is a model's spec (della/models/registry.py), registered in
della/models/catalog.py. Importing this package imports no model module and no torch, so the
workflow checks a config at DAG build cheaply; `della.models.base.build_model` builds one.

A registration may give `paper_name` (what the paper's tables call the model, e.g. "GPT-2"): it is the
model's default row label and the row it is compared with in the paper's published numbers (della/paper/).
"""

from della.models import catalog  # noqa: F401 - registers the models
from della.models.registry import (BACKBONE_KINDS, MODELS, ModelSpec, check_model_name, default_label, paper_name,
                                   paper_row, register_model, runs_on)

__all__ = ["BACKBONE_KINDS", "MODELS", "ModelSpec", "check_model_name", "default_label", "paper_name",
           "paper_row", "register_model", "runs_on"]
