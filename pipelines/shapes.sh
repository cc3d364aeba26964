#!/usr/bin/env bash
# Synthetic shapes end to end, step by step (what `featcache demo` runs, at full size).
# Random weights: no model hub is needed, and every later command warns that the features are untrained.
set -euo pipefail
DATA=${DATA:-data/shapes}
STORE=${STORE:-cache/shapes-dino2-s14-random.zarr}
featcache data synth --out "$DATA" --images "${IMAGES:-2000}" --seed 0
featcache extract --vfm dino2-s14 --weights random --data "$DATA" --out "$STORE" --config configs/extract/dino2-s14.yaml
featcache info "$STORE"
