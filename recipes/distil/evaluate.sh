#!/bin/bash
# The card's evaluation (issue #22): each set scored in ONE `speech-transformer evaluate` run with the shipped
# model (default), Whisper base in this engine (greedy, 30 s window), faster-whisper base int8 and pocketsphinx,
# on 2 threads; reports in $OUT/<name>.json (+ .md, .html) for `ship.py --report NAME=PATH`.
#   recipes/distil/evaluate.sh                      # all sets
#   SETS="dev" MODEL=model:/tmp/v4 recipes/distil/evaluate.sh
#   ONLY=peers OUT=... recipes/distil/evaluate.sh   # the peers alone (ONLY=ours: the model alone), in
#                                                   # <name>-peers.json / <name>-ours.json: ship.py merges
#                                                   # two reports of one set given under the same NAME
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
DATA=${DATA:-$(cd "$HERE/../../../shared/data" && pwd)}
OUT=${OUT:-/var/tmp/st-distil/reports}
MODEL=${MODEL:-default}
SETS=${SETS:-"dev an4-test fsdd-test samples"}
ONLY=${ONLY:-}
DECODINGS=${DECODINGS:-}  # e.g. "beam=1 beam=4": one row of the model per decoding (default: its preferred one)
export OMP_NUM_THREADS=${THREADS:-2} MKL_NUM_THREADS=${THREADS:-2}
declare -A MANIFEST=([dev]=librispeech/dev.tsv [an4-test]=an4/test.tsv [fsdd-test]=fsdd/test.tsv
                     [samples]=samples/samples.tsv [librispeech-samples]=librispeech/samples/samples.tsv)
ours=(--system "$MODEL,name=${NAME:-v5}")
for d in $DECODINGS; do ours+=(--system "$MODEL,$d,name=${NAME:-v5}-${d//[=,]/}"); done
peers=(--system "model:whisper:base,name=whisper-base"
       --system "faster-whisper:base,compute=int8,threads=$OMP_NUM_THREADS,name=faster-whisper-base-int8"
       --system pocketsphinx)
case "$ONLY" in
    "") systems=("${ours[@]}" "${peers[@]}") suffix="" ;;
    ours) systems=("${ours[@]}") suffix="-ours" ;;
    peers) systems=("${peers[@]}") suffix="-peers" ;;
    *) echo "ONLY must be ours or peers, not $ONLY" >&2; exit 2 ;;
esac
mkdir -p "$OUT"
for name in $SETS; do
    speech-transformer evaluate --data "$DATA/${MANIFEST[$name]}" --no-cache --no-progress "${systems[@]}" \
        --output "$OUT/$name$suffix.json" ${LIMIT:+--limit $LIMIT}
done
