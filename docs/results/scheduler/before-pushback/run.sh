#!/bin/sh
# The box-wide scheduler's settings under `e2edge bench load` (see README.md here).
# Run from the repository root; DURATION defaults to 25 s (60 as first requested).
set -e
DURATION=${DURATION:-25}
OUT=${OUT:-docs/results/scheduler}
run() {  # NAME CONFIG MIX
  e2edge bench load --config "docs/results/scheduler/$2.yaml" --clients 64 \
    --duration "$DURATION" --warmup 5 --mix "$3" --out "$OUT/$1.json"
}
run llm-alone llm-alone generate
run vit-alone vit-alone classify
run share-1-1 share-1-1 generate:classify
run share-3-1 share-3-1 generate:classify
run share-3-1-classify-heavy share-3-1 generate=1:classify=3
run vit-priority-idle-llm vit-priority classify
