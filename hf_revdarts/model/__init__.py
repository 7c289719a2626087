"""The files a published model folder carries (copied beside its weights for ``trust_remote_code``): the
genotype and its search space, the configuration, the candidate ops, the reversible coupling, the modeling
code, its generation helpers and the translation pipeline. They import only each other.

Importing this package registers the ``revdarts`` model type with transformers' Auto classes.
"""

from transformers import AutoConfig, AutoModel, AutoModelForSeq2SeqLM

from .configuration_revdarts import RevDartsConfig
from .genotype import DECODER_OPS, ENCODER_OPS, Genotype
from .modeling_revdarts import (
    RevDartsCache,
    RevDartsForConditionalGeneration,
    RevDartsModel,
    RevDartsPreTrainedModel,
)

AutoConfig.register(RevDartsConfig.model_type, RevDartsConfig, exist_ok=True)
AutoModel.register(RevDartsConfig, RevDartsModel, exist_ok=True)
AutoModelForSeq2SeqLM.register(RevDartsConfig, RevDartsForConditionalGeneration, exist_ok=True)

# What save_pretrained copies beside the weights: the modeling module and everything it imports, plus the
# pipeline (named in config.json's custom_pipelines).
REMOTE_CODE_FILES: tuple[str, ...] = (
    "configuration_revdarts.py",
    "genotype.py",
    "modeling_revdarts.py",
    "generation_revdarts.py",
    "ops.py",
    "reversible.py",
    "pipeline_translation.py",
)

__all__ = [
    "DECODER_OPS",
    "ENCODER_OPS",
    "REMOTE_CODE_FILES",
    "Genotype",
    "RevDartsCache",
    "RevDartsConfig",
    "RevDartsForConditionalGeneration",
    "RevDartsModel",
    "RevDartsPreTrainedModel",
]
