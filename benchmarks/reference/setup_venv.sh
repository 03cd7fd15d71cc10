#!/usr/bin/env bash
# Build a separate virtualenv holding imitation==1.0.1 for the reference benchmarks.
#
# Usage: bash benchmarks/reference/setup_venv.sh [VENV_DIR]   (default /work/imitation-venv)
#
# It never touches the project's own .venv. Every pip call gets a constraints file
# pinning torch==2.13.0, so the resolver can never pull a different torch (an unpinned
# torch brings gigabytes of CUDA packages). torch is installed first, on its own.
#
# Versions: imitation 1.0.1 asks for gymnasium~=0.29, stable-baselines3~=2.2.1,
# seals~=0.2.1, huggingface-sb3~=3.0 and unpinned torch/numpy/datasets/...; all of
# these resolve together with torch 2.13.0 with no override (see README.md for the
# versions that were resolved and the numpy-2 check).
set -euo pipefail

VENV="${1:-/work/imitation-venv}"
PYTHON="${PYTHON:-python3}"

CONSTRAINTS="$(mktemp)"
trap 'rm -f "$CONSTRAINTS"' EXIT
cat >"$CONSTRAINTS" <<'EOF'
torch==2.13.0
EOF

start=$(date +%s)
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip)

# 1. torch first, alone. pip's find-links/extra index on this machine serve the CPU
#    wheel (torch-2.13.0+cpu); "torch==2.13.0" matches it and, being a local version,
#    it sorts above a plain 2.13.0.
"${PIP[@]}" install -c "$CONSTRAINTS" "torch==2.13.0"

# 2. imitation and its runtime dependencies (torch already satisfied -> untouched).
"${PIP[@]}" install -c "$CONSTRAINTS" "imitation==1.0.1"

# 3. Sanity checks: the pinned torch survived, no CUDA stack crept in, imports work.
"$VENV/bin/python" - <<'EOF'
import importlib.metadata as md
import torch, numpy, gymnasium, stable_baselines3, imitation  # noqa: F401
from imitation.data import rollout, serialize  # noqa: F401
assert torch.__version__.startswith("2.13.0"), torch.__version__
cuda = [d.metadata["Name"] for d in md.distributions()
        if d.metadata["Name"].lower().startswith("nvidia-")]
assert not cuda, f"CUDA packages installed: {cuda}"
print("imitation", md.version("imitation"), "| stable-baselines3", stable_baselines3.__version__,
      "| gymnasium", gymnasium.__version__, "| torch", torch.__version__,
      "| numpy", numpy.__version__)
EOF
echo "imitation venv ready at $VENV in $(( $(date +%s) - start )) s"
