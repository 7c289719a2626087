"""The project's translation metric as an ``evaluate`` module: corpus BLEU (cased, 13a: the primary figure),
lowercased BLEU and chrF, each with its sacreBLEU signature.

``evaluate.load("sacrebleu")`` fetches its script from the Hub; this file is loaded by path instead, so it
works offline and gives the scores the model cards state::

    import evaluate
    from hf_revdarts.evaluation import METRIC_PATH

    metric = evaluate.load(METRIC_PATH)
    metric.compute(predictions=["Ein Hund läuft."], references=["Ein Hund rennt."])

It is the same object a ``Seq2SeqTrainer``'s ``compute_metrics`` calls (``references`` may be one string per
prediction or a one-element list, as with ``evaluate.load("sacrebleu")``). The file imports only
``evaluate``, ``datasets`` and ``sacrebleu``: ``evaluate`` copies it into its module cache to load it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import datasets
import evaluate
from sacrebleu.metrics import BLEU, CHRF

_CITATION = """\
@inproceedings{post-2018-call,
    title = "A Call for Clarity in Reporting {BLEU} Scores",
    author = "Post, Matt",
    booktitle = "Proceedings of the Third Conference on Machine Translation: Research Papers",
    year = "2018",
    pages = "186--191",
}
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[str]`): the system's translations, one per sentence.
    references (`list[str]` or `list[list[str]]`): one reference per sentence (a string, or a list holding it).
Returns:
    bleu, bleu_lowercase, chrf (rounded to 2 decimals), their sacreBLEU signatures and details, sentences.
"""


def corpus_scores(predictions: Sequence[str], references: Sequence[str]) -> dict[str, Any]:
    """BLEU two ways and chrF of aligned ``predictions`` and single ``references``."""
    if len(predictions) != len(references):
        raise ValueError(
            f"{len(predictions)} predictions for {len(references)} references: they must align line by line"
        )
    if not references:
        raise ValueError("no references: BLEU of an empty test set is undefined")
    hyps, refs = list(predictions), [list(references)]
    out: dict[str, Any] = {}
    for key, metric in (("bleu", BLEU()), ("bleu_lowercase", BLEU(lowercase=True))):
        score = metric.corpus_score(hyps, refs)
        out[key] = round(score.score, 2)
        out[f"{key}_signature"] = str(metric.get_signature())
        out[f"{key}_detail"] = str(score)
    chrf = CHRF()
    out["chrf"] = round(chrf.corpus_score(hyps, refs).score, 2)
    out["chrf_signature"] = str(chrf.get_signature())
    out["sentences"] = len(hyps)
    return out


def _single_references(references: Sequence[Any]) -> list[str]:
    out = []
    for i, ref in enumerate(references):
        if isinstance(ref, str):
            out.append(ref)
        elif isinstance(ref, (list, tuple)) and len(ref) == 1 and isinstance(ref[0], str):
            out.append(ref[0])
        else:
            raise ValueError(f"references[{i}] must be one reference string (or a list holding one), got {ref!r}")
    return out


@evaluate.utils.file_utils.add_start_docstrings(_KWARGS_DESCRIPTION)
class SacrebleuChrf(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=__doc__,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=[
                datasets.Features({"predictions": datasets.Value("string"),
                                   "references": datasets.Sequence(datasets.Value("string"))}),
                datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")}),
            ],
            codebase_urls=["https://github.com/mjpost/sacreBLEU"],
        )

    def _compute(self, predictions: Sequence[str], references: Sequence[Any]) -> dict[str, Any]:
        return corpus_scores(predictions, _single_references(references))
