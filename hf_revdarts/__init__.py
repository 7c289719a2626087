"""hf_revdarts: memory-efficient DARTS on a multi-split reversible Transformer, as HuggingFace models.

The package is in floors, each importing only the floors below it:

- ``model`` (ground): the files a published model folder carries; ``utils`` (ground): atomic files, guards,
  checkpoint integrity, schedules.
- ``memory`` and ``search``: the memory planner; the supernet, the architect and the genotype selection.
- ``training`` and ``evaluation``: the scripts' arguments, data, loop and checkpoints; translation and scores.
- ``protocol``: the evaluation protocol's run records, comparisons and report.

This module only re-exports the public names (and registers the model type, through ``model``).
"""

from .memory import estimate_memory, plan_memory
from .model import (
    DECODER_OPS,
    ENCODER_OPS,
    Genotype,
    RevDartsCache,
    RevDartsConfig,
    RevDartsForConditionalGeneration,
    RevDartsModel,
    RevDartsPreTrainedModel,
)
from .training.tokenization import encode_pairs, save_tokenizer, train_tokenizer

__version__ = "0.1.0"


def __getattr__(name: str):
    # Lazy: importing the pipeline pulls in transformers.pipelines (slow); only load it when asked for.
    if name == "TranslationPipeline":
        from .model.pipeline_translation import TranslationPipeline

        return TranslationPipeline
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DECODER_OPS",
    "ENCODER_OPS",
    "Genotype",
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
]
