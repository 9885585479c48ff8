"""Model registry: `MODELS.get(name)`. Adding a baseline = one module here + one import line."""

from della.models.base import MODELS, LatentModel, LossOutput, Posterior, Vocab, build_model
from della.models import della, embed, gpt2, memory, softmax  # noqa: F401  (registration)

__all__ = ["MODELS", "LatentModel", "LossOutput", "Posterior", "Vocab", "build_model"]
