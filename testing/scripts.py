"""The scripts of ``training/`` and ``benchmarks/`` imported as modules, for tests that call their ``main`` or helpers
directly."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from testing import REPO


def load_script(name: str) -> ModuleType:
    """Import ``training/<name>.py`` as a module (under a name that shadows no library, e.g. ``evaluate``)."""
    module_name = f"revdarts_script_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    return load_file(REPO / "training" / f"{name}.py", module_name)


def load_benchmark(name: str) -> ModuleType:
    """Import ``benchmarks/<name>.py`` afresh (a test may patch its module globals without touching another's)."""
    return load_file(REPO / "benchmarks" / f"{name}.py", f"{name}_under_test")


def load_file(path: Path, module_name: str) -> ModuleType:
    """Import the script ``path`` afresh as ``module_name`` (e.g. a benchmark, whose helpers a test calls)."""
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses resolve their annotations through sys.modules
    spec.loader.exec_module(module)
    return module
