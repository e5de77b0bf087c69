#!/bin/bash
# The card's evaluation (issue #22): each set scored in ONE `speech-transformer evaluate` run with the shipped
# model (default), Whisper base in this engine (greedy, 30 s window), faster-whisper base int8 and pocketsphinx,
# on 2 threads; reports in $OUT/<name>.json (+ .md, .html) for `ship.py --report NAME=PATH`.
#   recipes/distil/evaluate.sh                      # all sets
#   SETS="dev" MODEL=model:/tmp/v4 recipes/distil/evaluate.sh
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
DATA=${DATA:-$(cd "$HERE/../../../shared/data" && pwd)}
OUT=${OUT:-/var/tmp/st-distil/reports}
MODEL=${MODEL:-default}
SETS=${SETS:-"dev an4-test fsdd-test samples"}
export OMP_NUM_THREADS=${THREADS:-2} MKL_NUM_THREADS=${THREADS:-2}
declare -A MANIFEST=([dev]=librispeech/dev.tsv [an4-test]=an4/test.tsv [fsdd-test]=fsdd/test.tsv
                     [samples]=samples/samples.tsv [librispeech-samples]=librispeech/samples/samples.tsv)
mkdir -p "$OUT"
for name in $SETS; do
    speech-transformer evaluate --data "$DATA/${MANIFEST[$name]}" --no-cache --no-progress \
        --system "$MODEL,name=v4" --system "model:whisper:base,name=whisper-base" \
        --system "faster-whisper:base,compute=int8,threads=$OMP_NUM_THREADS,name=faster-whisper-base-int8" \
        --system pocketsphinx --output "$OUT/$name.json" ${LIMIT:+--limit $LIMIT}
done
