"""hf_revdarts: memory-efficient DARTS on a multi-split reversible Transformer, as HuggingFace models."""

from transformers import AutoConfig, AutoModel, AutoModelForSeq2SeqLM

from .configuration_revdarts import DECODER_OPS, ENCODER_OPS, RevDartsConfig, standard_genotype
from .modeling_revdarts import (
    RevDartsCache,
    RevDartsForConditionalGeneration,
    RevDartsModel,
    RevDartsPreTrainedModel,
)

__version__ = "0.1.0"

AutoConfig.register(RevDartsConfig.model_type, RevDartsConfig, exist_ok=True)
AutoModel.register(RevDartsConfig, RevDartsModel, exist_ok=True)
AutoModelForSeq2SeqLM.register(RevDartsConfig, RevDartsForConditionalGeneration, exist_ok=True)

__all__ = [
    "DECODER_OPS",
    "ENCODER_OPS",
    "RevDartsCache",
    "RevDartsConfig",
    "RevDartsForConditionalGeneration",
    "RevDartsModel",
    "RevDartsPreTrainedModel",
    "standard_genotype",
]
