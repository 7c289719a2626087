#!/usr/bin/env bash
# Creates (or reuses) the project's virtual environment and installs hf_revdarts with its dependencies.
# The CPU build of torch is pinned and installed first: an unpinned torch in an empty venv pulls a
# multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --disable-pip-version-check "$TORCH_SPEC"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -e ".[dev]" "$@"
