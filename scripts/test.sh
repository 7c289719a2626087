#!/usr/bin/env bash
# The README's test command: the whole suite on transformers 5.x, then the integration tests on 4.57.x.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m pytest -q "$@"
if [ -f .ci/integration_457.sh ]; then
  bash .ci/integration_457.sh
fi
