#!/usr/bin/env bash
# The gpu-marked test set on the device (tests/test_gpu.py and every other @pytest.mark.gpu test), with the
# versions recorded. Run from the repository root on a CUDA machine, with hydra-core/omegaconf wheels in .whl/
# (../shared/tools/device-wheels.sh makes them):  OUT=/some/dir bash experiments/gpu_tests/run.sh
set -euo pipefail
OUT=${OUT:-experiments/gpu_tests/out}
mkdir -p "$OUT"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
fi
export WANDB_MODE=disabled
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, transformers, timm; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', \
torch.backends.cudnn.version(), 'transformers', transformers.__version__, 'timm', timm.__version__)" | tee "$OUT/versions.txt"
python3 -m pytest -q -p no:cacheprovider -m gpu -rA -s -o log_level=WARNING --continue-on-collection-errors tests 2>&1 | grep -v 'DEBUG    torch' \
  | tee "$OUT/pytest_gpu.log" | tail -40
