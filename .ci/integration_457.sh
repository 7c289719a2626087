#!/usr/bin/env bash
# Integration tests (generation + cache, auto_map/remote code, pipeline, tokenizer) on transformers 4.57.x,
# in a second virtual environment next to the 5.x one that runs the full suite.
# The CPU build of torch is pinned and installed first, then transformers 4.57.6 (which leaves the
# installed torch alone), then hf_revdarts itself without re-resolving its dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."
MAIN_VENV="${VENV:-.venv}"  # the 5.x environment of scripts/setup.sh, for the cross-version load tests
VENV="${VENV_457:-.venv-457}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
PIP=(-m pip install -q --disable-pip-version-check)
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/python" "${PIP[@]}" "$TORCH_SPEC"
"$VENV/bin/python" "${PIP[@]}" "transformers==4.57.6" "accelerate>=1.0" "safetensors>=0.4" "tokenizers>=0.20" \
  "sentencepiece" "pytest>=8"
"$VENV/bin/python" "${PIP[@]}" --no-deps -e .
"$VENV/bin/python" -c "import torch, transformers; print('torch', torch.__version__, '| transformers', transformers.__version__)"
OTHER=""
if [ -x "$MAIN_VENV/bin/python" ]; then
  OTHER="$(cd "$MAIN_VENV" && pwd)/bin/python"
fi
# All integration tests on 4.57 (with the 5.x venv present, one of them loads a 4.57-saved folder under 5.x).
HF_REVDARTS_OTHER_PYTHON="$OTHER" "$VENV/bin/python" -m pytest -q tests/model/integration "$@"
# The other direction: a folder saved under 5.x loads under 4.57.
if [ -n "$OTHER" ]; then
  HF_REVDARTS_OTHER_PYTHON="$(cd "$VENV" && pwd)/bin/python" "$OTHER" -m pytest -q tests/model/integration \
    -k other_transformers_major "$@"
fi
