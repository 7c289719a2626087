#!/usr/bin/env bash
# GPU check (issue 12): widest supernet d_model in a 16 GB budget, reversible vs ordinary vs checkpointing vs hybrid,
# measured with torch.cuda.max_memory_allocated, and step times. About 7 minutes on one H100 (stops probing at
# --time_limit, default 420 s). Figures: $OUT/gpu_check.{json,md} (OUT defaults to ./gpu_check_out).
#   benchmarks/gpu_check.sh               # on a GPU machine
#   benchmarks/gpu_check.sh --dry-run     # the same logic on CPU at toy size (no GPU needed)
# Extra arguments go to benchmarks/gpu_check.py (--budget, --layers, --batch, --length, --modes, ...).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
export OUT="${OUT:-$ROOT/gpu_check_out}"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUT"
"$PYTHON" -c "import torch, transformers" 2>/dev/null || {
  echo "gpu_check: $PYTHON cannot import torch and transformers; set PYTHON to an environment that has them" >&2
  exit 2
}
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/nvidia-smi.csv" || true
fi
exec timeout 480 "$PYTHON" "$ROOT/benchmarks/gpu_check.py" --out "$OUT" "$@"
