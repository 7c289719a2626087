"""Random search with successive halving, the practitioner's baseline for a search (Jamieson & Talwalkar 2016;
Li & Talwalkar 2019 for NAS): draw genotypes at random, train them all briefly, keep the best ``1/eta`` on
validation loss, train those longer, and so on until one is left, which is trained to the recipe's budget.

Survivors continue their own checkpoints (the recipe's inverse-sqrt schedule does not depend on the budget), so
the last one's model is the one the recipe would have trained from scratch, and a rung costs only the updates it
adds. Only validation loss decides; the test split is translated once, for the survivor.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Rung:
    """``candidates`` runs, each trained to ``budget`` updates (continuing its previous rung)."""

    candidates: int
    budget: int


def halving_schedule(candidates: int, first_budget: int, final_budget: int, eta: int = 2) -> list[Rung]:
    """The rungs: ``candidates`` trained to ``first_budget`` updates, the best ``ceil(n / eta)`` of them to ``eta``
    times that, ... until one is left; the last rung trains it to ``final_budget``."""
    if candidates < 1 or eta < 2:
        raise ValueError(f"successive halving needs candidates >= 1 and eta >= 2, got {candidates} and {eta}")
    if not 0 < first_budget <= final_budget:
        raise ValueError(f"the first rung's budget ({first_budget}) must be in (0, {final_budget}], the final budget")
    rungs, n, budget = [], candidates, first_budget
    while n > 1 and budget < final_budget:
        rungs.append(Rung(n, budget))
        n, budget = math.ceil(n / eta), min(budget * eta, final_budget)
    # One is left, or the budget ran out first: either way the best one is trained to the final budget.
    rungs.append(Rung(1, final_budget))
    return rungs


def schedule_updates(rungs: Sequence[Rung]) -> int:
    """Updates the whole search trains: each rung's survivors add the updates between its budget and the last."""
    total, before = 0, 0
    for rung in rungs:
        total += rung.candidates * (rung.budget - before)
        before = rung.budget
    return total


def survivors(val_loss: Mapping[str, float], keep: int) -> list[str]:
    """The ``keep`` candidates of lowest validation loss (ties: by name, so a rerun keeps the same ones)."""
    return sorted(val_loss, key=lambda name: (val_loss[name], name))[:keep]
