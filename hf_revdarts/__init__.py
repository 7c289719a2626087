"""hf_revdarts: memory-efficient DARTS on a multi-split reversible Transformer, as HuggingFace models."""

from transformers import AutoConfig, AutoModel, AutoModelForSeq2SeqLM

from .configuration_revdarts import DECODER_OPS, ENCODER_OPS, RevDartsConfig, standard_genotype
from .memory import estimate_memory, plan_memory
from .modeling_revdarts import (
    RevDartsCache,
    RevDartsForConditionalGeneration,
    RevDartsModel,
    RevDartsPreTrainedModel,
)
from .tokenization import encode_pairs, save_tokenizer, train_tokenizer

__version__ = "0.1.0"

AutoConfig.register(RevDartsConfig.model_type, RevDartsConfig, exist_ok=True)
AutoModel.register(RevDartsConfig, RevDartsModel, exist_ok=True)
AutoModelForSeq2SeqLM.register(RevDartsConfig, RevDartsForConditionalGeneration, exist_ok=True)



def __getattr__(name: str):
    # Lazy: importing the pipeline pulls in transformers.pipelines (slow); only load it when asked for.
    if name == "TranslationPipeline":
        from .pipeline_translation import TranslationPipeline

        return TranslationPipeline
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DECODER_OPS",
    "ENCODER_OPS",
    "RevDartsCache",
    "RevDartsConfig",
    "RevDartsForConditionalGeneration",
    "RevDartsModel",
    "RevDartsPreTrainedModel",
    "TranslationPipeline",
    "encode_pairs",
    "estimate_memory",
    "plan_memory",
    "save_tokenizer",
    "train_tokenizer",
    "standard_genotype",
]
