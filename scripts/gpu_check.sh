#!/usr/bin/env bash
# One prepared GPU check (issue 7): CUDA tests, SAM fast-path agreement, labeler benchmark
# (fp32 one image per call vs bf16 + SDPA batched 1/4/8/16, real-size random-weight Grounding DINO
# Swin-T + SAM ViT-H, peak memory) and the train-step benchmark (incl. Lightning fit vs a plain
# loop), all written to ONE markdown report. Budget: under 8 minutes on one H100/H200; every step
# has its own timeout so a hang cannot eat the rest.
#
# Usage:  scripts/gpu_check.sh [REPORT_DIR]      (default: $OUT, else ./gpu_check_out)
# Without a CUDA device it still runs: it writes the report with the environment and a clear
# "SKIPPED (no CUDA device)" line per CUDA step (tests/test_gpu_check.py runs it that way).
#
# On any CUDA machine with network access:
#     pip install -c constraints.txt -e ".[dev]" && scripts/gpu_check.sh DIR
# Offline (e.g. a PyTorch + CUDA image without network that lacks a few of our dependencies): on a
# networked machine download them into the git-ignored wheels/ folder,
#     PYTHON_VERSION=3.12 scripts/prepare_gpu_wheels.sh   # the GPU machine's Python version
# copy the checkout with wheels/ to the GPU machine, and there run
#     pip install --no-index --find-links wheels/ --no-deps wheels/*.whl && \
#     pip install --no-deps -e . && scripts/gpu_check.sh DIR
# (--no-deps keeps the machine's torch; W&B is not needed: the checks log nothing to it.)
set -uo pipefail

cd "$(dirname "$0")/.."
DIR="${1:-${OUT:-gpu_check_out}}"
mkdir -p "$DIR"
REPORT="$DIR/gpu_check.md"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export WANDB_MODE=offline
PY="${PYTHON:-python}"
FAILED=0

HAS_CUDA=$("$PY" -c "import torch; print(int(torch.cuda.is_available()))" 2>/dev/null || echo 0)

{
  echo "# wsss_pl GPU check"
  echo
  echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC'), git: $(git rev-parse --short HEAD 2>/dev/null || echo n/a)"
  "$PY" - <<'EOF'
import platform, torch
gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
print(f"- python {platform.python_version()}, torch {torch.__version__}, CUDA device: {gpu}")
EOF
  echo
} >"$REPORT"

# step TITLE TIMEOUT_S COMMAND...: run, append its output to the report in a code block.
step() {
  local title="$1" limit="$2"
  shift 2
  echo "## $title" >>"$REPORT"
  echo >>"$REPORT"
  echo "\`$*\`" >>"$REPORT"
  echo >>"$REPORT"
  local start=$SECONDS
  echo '```' >>"$REPORT"
  timeout --kill-after=10 "$limit" "$@" >>"$REPORT" 2>"$DIR/stderr.txt"
  local rc=$?
  echo '```' >>"$REPORT"
  if [ $rc -ne 0 ]; then
    FAILED=1
    echo "**FAILED (exit $rc$([ $rc -eq 124 ] && echo ", timed out after ${limit}s"))**; stderr tail:" >>"$REPORT"
    echo '```' >>"$REPORT"
    tail -n 30 "$DIR/stderr.txt" >>"$REPORT"
    echo '```' >>"$REPORT"
  fi
  echo "($((SECONDS - start)) s)" >>"$REPORT"
  echo >>"$REPORT"
  echo "[gpu_check] $title: exit $rc in $((SECONDS - start)) s" >&2
}

skip() {
  echo "## $1" >>"$REPORT"
  echo >>"$REPORT"
  echo "SKIPPED (no CUDA device): $1" >>"$REPORT"
  echo >>"$REPORT"
  echo "[gpu_check] SKIPPED (no CUDA device): $1" >&2
}

if [ "$HAS_CUDA" = "1" ]; then
  step "CUDA tests (pytest -m cuda) and the SAM fast-path equivalence test" 180 \
    "$PY" -m pytest -q -m cuda --timeout 170 -p no:cacheprovider tests/test_cuda.py tests/test_sam_fast.py
  step "SAM image encoder: original vs sdpa, fp32 vs bf16 (ViT-H, 1024 px, batch 8)" 90 \
    "$PY" scripts/bench_sam_fast.py --device cuda --sam-type vit_h --batch 8 --compile
  step "Batch invariance on CUDA: label bytes in two processes, sorted vs shuffled (Swin-T + ViT-H, random, fp32 + bf16)" 240 \
    bash -c "for p in 32 bf16; do \
      '$PY' scripts/check_invariance.py --device cuda --models real-size-random --precision \$p --num-images 24 --call-size 4 --out '$DIR'/inv_\${p}_a.json && \
      '$PY' scripts/check_invariance.py --device cuda --models real-size-random --precision \$p --num-images 24 --call-size 7 --order shuffled --out '$DIR'/inv_\${p}_b.json && \
      '$PY' scripts/check_invariance.py --compare '$DIR'/inv_\${p}_a.json '$DIR'/inv_\${p}_b.json || exit 1; done"
  step "Labeler: per_image vs fixed-B vs free batching, fp32 + bf16/sdpa (Swin-T + ViT-H, random)" 210 \
    "$PY" scripts/bench_labeling.py --device cuda --models real-size-random --sam-type vit_h \
    --num-images 32 --batch-sizes 4 8 16 --fast --repeats 2 --warmup 1
  step "DeepLab-v2 training step and Lightning overhead (R101, batch 10, crop 321)" 100 \
    "$PY" scripts/bench_train_step.py --device cuda --channels-last --backbones resnet101 \
    --repeats 10 --lightning-steps 20
else
  skip "CUDA tests (pytest -m cuda)"
  skip "SAM image encoder benchmark on CUDA"
  skip "Batch invariance on CUDA (two processes, fp32 + bf16)"
  skip "Labeler benchmark on CUDA (Swin-T + ViT-H)"
  skip "Train-step benchmark on CUDA"
fi

echo "Overall: $([ $FAILED -eq 0 ] && echo OK || echo 'SOME STEPS FAILED')" >>"$REPORT"
echo "[gpu_check] report: $REPORT" >&2
exit $FAILED
