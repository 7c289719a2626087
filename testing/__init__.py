"""Test support for hf_revdarts, importable from the tests (pytest puts the repository root on ``sys.path``, see
``[tool.pytest.ini_options] pythonpath`` in pyproject.toml) and from the programs they launch (through
``PYTHONPATH``, see ``testing.launch``).

- ``testing.builders``: tiny configs, batches and gradient comparisons shared by the model and search tests;
- ``testing.scripts``: the scripts of ``training/`` imported as modules;
- ``testing.runs``: tiny settings for running those scripts, and checks of what a run left behind;
- ``testing.launch``: paths and environments for the programs the tests start as subprocesses;
- ``testing/programs/``: those programs (distributed checks, runs killed at a chosen point).

Nothing here is part of the hf_revdarts package.
"""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
