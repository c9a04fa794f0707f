#!/usr/bin/env bash
# Download, on a machine with network access, the wheels of the dependencies that a PyTorch + CUDA
# image commonly lacks, into the git-ignored wheels/ folder; copy the checkout with wheels/ to an
# offline CUDA machine and install them there with
#     pip install --no-index --find-links wheels/ --no-deps wheels/*.whl && pip install --no-deps -e .
# (scripts/gpu_check.sh's header has the whole sequence). Wheels are for the target's Python and
# platform: PYTHON_VERSION (default 3.12) and PLATFORM (default x86-64 manylinux). wandb is left
# out (large; the GPU checks log nothing to W&B). Versions follow constraints.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p wheels
PYTHON_VERSION="${PYTHON_VERSION:-3.12}"
PLATFORM="${PLATFORM:-x86_64}"
pin() { grep -iE "^${1//[-_]/[-_]}==" constraints.txt | head -n 1 || echo "$1"; }
pip download --only-binary=:all: --python-version "$PYTHON_VERSION" \
  --platform "manylinux2014_$PLATFORM" --platform "manylinux_2_17_$PLATFORM" --platform any \
  --no-deps -d wheels/ -c constraints.txt \
  "$(pin segment-anything)" "$(pin jsonargparse)" "$(pin omegaconf)" "$(pin antlr4-python3-runtime)" \
  "$(pin docstring-parser)" "$(pin typeshed-client)" "$(pin pycocotools)"
du -sh wheels/
