#!/usr/bin/env bash
# The README's test command: the lint (ruff, settings in pyproject.toml), the whole suite on transformers 5.x,
# then the integration tests on transformers 4.57.x.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/python -m pytest -q "$@"
if [ -f .ci/integration_457.sh ]; then
  bash .ci/integration_457.sh
fi
