#!/usr/bin/env bash
# The GPU check in one call: bash benchmarks/gpu_check.sh [--dry-run] [gpu_check.py options]
#
# Writes gpu_check.json and gpu_check.md under $OUT (default
# benchmarks/results/gpu_check). Needs jax with the accelerator's plugin,
# dm-haiku, optax and einops: those missing are installed from wheels carried
# in .whl/ (a machine without network), else from the package index
# (jax[cuda12] where a GPU is seen and jax has no GPU backend). --dry-run
# installs nothing and runs tiny sizes on any CPU, the same code path.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-benchmarks/results/gpu_check}"
PY="${PYTHON:-python3}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

missing() {  # names of the modules in "$@" that do not import
  "$PY" - "$@" <<'PY'
import importlib.util, sys
print(" ".join(m for m in sys.argv[1:] if importlib.util.find_spec(m) is None))
PY
}

if [[ " $* " != *" --dry-run "* ]]; then
  if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/perceiver_site .whl/*.whl
    export PYTHONPATH="$PYTHONPATH:/tmp/perceiver_site"
  fi
  declare -A package=([haiku]=dm-haiku [optax]=optax [einops]=einops [jmp]=jmp [tabulate]=tabulate)
  for module in $(missing haiku optax einops jmp tabulate); do
    "$PY" -m pip install -q "${package[$module]}"
  done
  if command -v nvidia-smi >/dev/null 2>&1 && ! "$PY" -c "import jax, sys; sys.exit(jax.default_backend() != 'gpu')"; then
    "$PY" -m pip install -q -U "jax[cuda12]"
  fi
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
fi
exec "$PY" benchmarks/gpu_check.py --out "$OUT" "$@"
