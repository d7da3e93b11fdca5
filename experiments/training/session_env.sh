# Sourced by the GPU session scripts: repo root R, a fresh work folder W, $OUT, unbuffered Python, no W&B.
set -u
R=$(cd "$(dirname "${BASH_SOURCE[1]}")/../.." && pwd)
W=/tmp/vtlab_gpu_session; rm -rf "$W"; mkdir -p "$W" "$OUT"
export PYTHONUNBUFFERED=1 WANDB_MODE=disabled
PY=${PYTHON:-python3}
