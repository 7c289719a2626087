"""Differentiable architecture search (DARTS) on the reversible RevDarts supernet."""

from .architect import (
    Architect,
    CollapseGuard,
    CollapseStop,
    annealed_temperature,
    arch_lr_for_steps,
)
from .selection import Selection, perturbation_selection, select_genotype
from .supernet import MixedSplit, RevDartsSupernet

__all__ = [
    "Architect",
    "CollapseGuard",
    "CollapseStop",
    "MixedSplit",
    "RevDartsSupernet",
    "Selection",
    "annealed_temperature",
    "arch_lr_for_steps",
    "perturbation_selection",
    "select_genotype",
]
