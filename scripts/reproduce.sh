#!/usr/bin/env bash
# Reproduce "An Alternative to WSSS?" (Sun et al. 2023) end to end and print ours beside the paper:
#   scripts/reproduce.sh voc --gpus 8 [--root /data/VOCdevkit] [--output_dir runs/reproduce_voc]
#   scripts/reproduce.sh coco --gpus 8 --root /data/coco
#   scripts/reproduce.sh voc --dry_run     # tiny models, synthetic data, CPU: 47 s on 2 idle
#                                          # cores (mostly stage start-up), longer on busy ones
#   scripts/reproduce.sh coco --dry_run    # the same on synthetic COCO-format data (37 s)
# Stages (label, score, fit, test, predict) are resumable; --stages picks a subset.
# Arguments after -- go to every stage, e.g. -- --data.num_workers 8.
set -euo pipefail
cd "$(dirname "$0")/.."
exec python -m wsss_pl reproduce "$@"
