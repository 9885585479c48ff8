"""The package's models: names, model_args, paper names and where each one's classes are.

This is where the package is assembled (imported by `della/models/__init__.py`); registering imports
no model module, so this stays torch-free. A new model: a module of this package with its class
(and, if its model_args are new, a dataclass in della/models/configs.py) and one `register_model`
call here.
"""

from della.models.configs import DellaConfig, GPT2LMConfig, OptimusConfig, SingleLatentConfig
from della.models.registry import register_model

register_model("gpt2", GPT2LMConfig, paper_name="GPT-2", has_latent=False, gpt2="della.models.gpt2:GPT2LM")
register_model("bart", GPT2LMConfig, paper_name="Bart-base", has_latent=False, bart="della.models.bart:BartLM")
register_model("embed", SingleLatentConfig, paper_name="Embed",
               gpt2="della.models.embed:EmbedVAE", bart="della.models.bart:BartEmbedVAE")
register_model("memory", SingleLatentConfig, paper_name="Memory",
               gpt2="della.models.memory:MemoryVAE", bart="della.models.bart:BartMemoryVAE")
register_model("softmax", SingleLatentConfig, paper_name="Softmax",
               gpt2="della.models.softmax:SoftmaxVAE", bart="della.models.bart:BartSoftmaxVAE")
# not among the paper's conditional models (Tables 2, 9)
register_model("optimus", OptimusConfig, paper_name="Optimus", supports_condition=False,
               gpt2="della.models.optimus:OptimusVAE")
register_model("della", DellaConfig, paper_name="DELLA",
               gpt2="della.models.della:Della", bart="della.models.bart:BartDella")
