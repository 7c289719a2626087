"""The project's BLEU/chrF through ``evaluate``, the metric interface transformers users write
``compute_metrics`` with: ``load_metric()`` is ``evaluate.load`` of the local module ``sacrebleu_chrf.py``
(offline; ``evaluate.load("sacrebleu")`` would fetch its script from the Hub)."""

from __future__ import annotations

import functools
import importlib
import sys
from pathlib import Path
from typing import Any

METRIC_PATH = str(Path(__file__).with_name("sacrebleu_chrf.py"))


def _evaluate_library() -> Any:
    """The ``evaluate`` package. The scripts folder holds a ``training/evaluate.py``; a script run from there
    has that folder first on ``sys.path``, where ``import evaluate`` would find the script, not the library."""
    module = sys.modules.get("evaluate")
    if module is not None and hasattr(module, "load"):
        return module
    saved = sys.path[:]
    sys.path[:] = [p for p in saved if not (Path(p or ".") / "evaluate.py").is_file()]
    try:
        sys.modules.pop("evaluate", None)
        return importlib.import_module("evaluate")
    finally:
        sys.path[:] = saved


@functools.lru_cache(maxsize=1)
def load_metric() -> Any:
    """``evaluate.load`` of the project's metric: ``.compute(predictions=, references=)`` gives ``bleu`` (cased
    13a sacreBLEU, the primary figure), ``bleu_lowercase`` and ``chrf``, each with its signature."""
    return _evaluate_library().load(METRIC_PATH)


def bleu_and_chrf(hypotheses: list[str], references: list[str]) -> dict[str, Any]:
    """Corpus BLEU two ways (``bleu``: cased, 13a, the primary figure; ``bleu_lowercase``) and chrF, each with
    its sacreBLEU signature, and the number of sentences."""
    return load_metric().compute(predictions=list(hypotheses), references=list(references))
