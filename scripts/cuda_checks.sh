#!/usr/bin/env bash
# The checks that need a CUDA machine (flash-attn vs SDPA in bf16, ViT-B / ViT-L MFU and peak
# memory; DeepSpeed bf16 over NCCL with a resume; pinned loader batches; the probe on the GPU).
# Here: bash scripts/cuda_wheels.sh. Then one device call, from the repo root:
#   run(command="bash scripts/cuda_checks.sh", carry=[".whl"], timeout_s=560)
# Results come back under $OUT: gpu.txt, tests.txt, train_loader_cuda.json (+ .log).
set -uo pipefail
OUT=${OUT:-/tmp/cuda_checks}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 IVKIT_PROGRESS=0
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch, deepspeed; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'deepspeed', deepspeed.__version__)"
  python3 -c "import flash_attn; print('flash_attn', flash_attn.__version__)" 2>&1 | tail -1; } | tee "$OUT/gpu.txt"
# 1. the CUDA tests (the rest of these files runs too, on the CPU, in seconds); the engine's on its own
timeout 150 python3 -m pytest -q -rs -p no:cacheprovider tests/test_train_model.py tests/test_train_data.py \
  tests/test_train_probe.py 2>&1 | tee "$OUT/tests.txt"
timeout 200 python3 -m pytest -q -rs -p no:cacheprovider \
  "tests/test_train_engine.py::test_cuda_bf16_zero1_trains_and_resumes" 2>&1 | tee -a "$OUT/tests.txt"
# 2. ViT-B / ViT-L stage-1 steps: student/teacher split, MFU, peak memory; host-to-GPU of a batch
timeout 280 python3 bench/train_loader.py --cuda --clips 16 --out "$OUT/train_loader_cuda.json" > "$OUT/train_loader_cuda.log" 2>&1
echo "train_loader --cuda: exit $?"
cat "$OUT/train_loader_cuda.json" 2>/dev/null || tail -c 3000 "$OUT/train_loader_cuda.log"
