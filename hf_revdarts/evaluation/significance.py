"""BLEU two ways, and paired bootstrap significance of one system against another (sacreBLEU's own).

- **Primary**: cased, detokenised sacreBLEU (``BLEU()``: 13a tokenisation, mixed case) with its signature,
  the figure to compare between systems of this project.
- **Lowercased 13a** (``BLEU(lowercase=True)``): closer to the lowercased, tokenised BLEU most Multi30k
  papers report (e.g. Wu et al. 2021), for orientation only — the two are still not identical.
- **Paired bootstrap resampling** (Koehn 2004) through ``sacrebleu.significance.PairedTest`` with
  ``test_type="bs"`` (what ``sacrebleu --paired-bs`` runs): resample the test sentences with replacement,
  score both systems on every resample, and return the p-value of the observed difference plus each
  system's bootstrap mean and 95% confidence half-width.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

logger = logging.getLogger(__name__)


def _check(hypotheses: Sequence[str], references: Sequence[str], what: str = "hypotheses") -> None:
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} {what} for {len(references)} references: they must align line by line")
    if not references:
        raise ValueError("no references: BLEU of an empty test set is undefined")


@dataclass
class PairedBootstrap:
    """Result of a paired bootstrap test of system A against system B (B is the baseline)."""

    bleu_a: float
    bleu_b: float
    delta: float  # bleu_a - bleu_b on the full test set
    p_value: float  # of the null hypothesis "A and B are equally good" (sacreBLEU's definition)
    mean_a: float  # bootstrap mean of A's BLEU
    ci_a: float  # 95% confidence half-width of A's BLEU
    mean_b: float
    ci_b: float
    n_samples: int
    sentences: int
    signature: str
    lowercase: bool

    def to_dict(self) -> dict[str, Any]:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}


@contextmanager
def _sacrebleu_seed(seed: int | None):
    """sacreBLEU reads its resampling seed from ``SACREBLEU_SEED``; set it for one call, then restore it."""
    old = os.environ.get("SACREBLEU_SEED")
    os.environ["SACREBLEU_SEED"] = "none" if seed is None else str(int(seed))
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("SACREBLEU_SEED", None)
        else:
            os.environ["SACREBLEU_SEED"] = old


def paired_bootstrap(
    hypotheses_a: Sequence[str],
    hypotheses_b: Sequence[str],
    references: Sequence[str],
    n_samples: int = 1000,
    seed: int | None = 12345,
    lowercase: bool = False,
) -> PairedBootstrap:
    """Paired bootstrap resampling of system A against baseline B on the same references.

    Uses ``sacrebleu.significance.PairedTest(test_type="bs")`` unchanged, so the p-value, mean and 95% CI
    are exactly those ``sacrebleu --paired-bs`` prints. ``seed`` fixes the resampling (sacreBLEU's default
    is 12345; ``None`` draws from the OS). The p-value is for the absolute difference, i.e. it does not say
    which system is better; read the sign of ``delta``. sacreBLEU follows MultEval in counting only resamples
whose centred difference *exceeds* the observed one, so a system compared with itself gets p = 1/(n+1).
    """
    from sacrebleu.metrics import BLEU
    from sacrebleu.significance import PairedTest

    _check(hypotheses_a, references, "hypotheses of A")
    _check(hypotheses_b, references, "hypotheses of B")
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    metric = BLEU(lowercase=lowercase)
    with _sacrebleu_seed(seed):
        test = PairedTest(
            [("B", list(hypotheses_b)), ("A", list(hypotheses_a))],
            {"BLEU": metric},
            [list(references)],
            test_type="bs",
            n_samples=n_samples,
        )
        signatures, scores = test()
    (name,) = [k for k in scores if k != "System"]
    base, system = scores[name]
    return PairedBootstrap(
        bleu_a=float(system.score),
        bleu_b=float(base.score),
        delta=float(system.score - base.score),
        p_value=float(system.p_value),
        mean_a=float(system.mean),
        ci_a=float(system.ci),
        mean_b=float(base.mean),
        ci_b=float(base.ci),
        n_samples=n_samples,
        sentences=len(references),
        signature=str(signatures[name]),
        lowercase=lowercase,
    )
