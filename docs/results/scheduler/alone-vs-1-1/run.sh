#!/bin/sh
# The LLM alone and the 1:1 setting (two applications), alternating, PAIRS times, 30 s
# each: the 1:1 LLM's tokens/s against alone's from the runs beside it (README.md one
# folder up). Run from the repository root.
set -e
PAIRS=${PAIRS:-4}
OUT=${OUT:-docs/results/scheduler/alone-vs-1-1}
for i in $(seq "$PAIRS"); do
  e2edge bench load --config docs/results/scheduler/llm-alone.yaml --clients 64 \
    --duration 30 --warmup 5 --mix generate --out "$OUT/llm-alone-$i.json"
  e2edge bench load --config docs/results/scheduler/share-1-1.yaml --clients 64 \
    --duration 30 --warmup 5 --mix generate:classify --mix-by client --out "$OUT/share-1-1-by-client-$i.json"
done
