"""Differentiable architecture search (DARTS) on the reversible RevDarts supernet."""

from .architect import Architect, CollapseGuard, CollapseStop
from .supernet import MixedSplit, RevDartsSupernet, validate_search_space

__all__ = ["Architect", "CollapseGuard", "CollapseStop", "MixedSplit", "RevDartsSupernet", "validate_search_space"]
