#!/usr/bin/env bash
# The standard hardware benchmark of this machine (GPU, TPU or CPU) in one script, within ~8 minutes:
#   bash benchmarks/accelerator.sh [--no-install] [--quick] [--ledger DIR] [--budget SECONDS]
# 1. installs what it needs (unless --no-install): JAX for the accelerator it finds (nvidia-smi: jax[cuda12];
#    a TPU: jax[tpu]) and harness itself (this checkout, else the package from PyPI/git already installed);
#    a failed install (e.g. offline) is reported and the JAX already there is used;
# 2. runs `harness bench suite` (harness/suite.py: strategies, model scale × dtype on synthetic data, a batch sweep,
#    the input pipeline, time to accuracy of fashion_mnist_cnn when the dataset is at hand);
# 3. appends the rows with the machine's fingerprint to the ledger (default benchmarks/results of this checkout)
#    and redraws the leaderboard and plots beside it. Commit benchmarks/results/*.jsonl afterwards.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
install=1
args=()
for a in "$@"; do
  case "$a" in
    --no-install) install=0 ;;
    *) args+=("$a") ;;
  esac
done
python=${PYTHON:-python3}

if [ "$install" = 1 ]; then
  extra=""
  if command -v nvidia-smi > /dev/null 2>&1 && nvidia-smi > /dev/null 2>&1; then
    extra="jax[cuda12]"
  elif ls /dev/accel* > /dev/null 2>&1 || [ -n "${TPU_NAME:-}" ]; then
    extra="jax[tpu]"
  fi
  if [ -n "$extra" ]; then
    "$python" -m pip install -q -U "$extra" || echo "accelerator.sh: could not install $extra; using the JAX already here"
  fi
  if [ -f "$here/pyproject.toml" ]; then
    "$python" -m pip install -q -e "$here" || echo "accelerator.sh: could not install $here; using the harness already here"
  fi
fi

"$python" -c "import jax; d = jax.devices(); print(f'accelerator.sh: jax {jax.__version__}, {len(d)} × {d[0].device_kind}')"
"$python" -m harness.cli bench suite "${args[@]}"
ledger=()
for ((i = 0; i < ${#args[@]}; i++)); do
  if [ "${args[$i]}" = "--ledger" ]; then ledger=(--ledger "${args[$((i + 1))]}"); fi
done
"$python" -m harness.cli bench report "${ledger[@]}"
