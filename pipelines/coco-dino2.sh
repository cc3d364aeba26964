#!/usr/bin/env bash
# COCO val2017 with pretrained DINOv2 ViT-S/14 (needs the model hub or WEIGHTS=path/to/checkpoint).
# On a GPU machine extraction uses CUDA with autocast; add WORKERS=N to spread units over a dask LocalCluster.
set -euo pipefail
COCO=${COCO:?set COCO to the COCO root (annotations/ and val2017/)}
WEIGHTS=${WEIGHTS:-hub}
featcache extract --data "coco:$COCO" --split val2017 --out cache/coco-val2017-dino2-s14.zarr \
  --config configs/extract/dino2-s14.yaml --weights "$WEIGHTS" --workers "${WORKERS:-0}"
featcache info cache/coco-val2017-dino2-s14.zarr
