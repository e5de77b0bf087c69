#!/bin/bash
# Distillation step 2 (issue #22): train the student on the teacher's labels, ONE CPU thread, from a frozen copy
# of the code in $RUN_DIR/train-code (made on the first call from this checkout). Re-run to resume exactly.
#   recipes/distil/train.sh                        # first time (after recipes/distil/run.sh has labelled sets)
#   cd /var/tmp/st-distil && { setsid nohup ./train.sh ARGS >> student/train.log 2>&1 < /dev/null & echo $! > train.pid; }
#   MINUTES=60 ./train.sh --sets ... --human ... --subsample ...   # the flags of the running job: README.md
#   CODE=train-code-8 OUT=student-full ./train.sh ...   # another run beside it: its own code copy and folder
set -euo pipefail
CODE=${CODE:-train-code} OUT=${OUT:-student}
HERE=$(cd "$(dirname "$0")" && pwd)
if [ -d "$HERE/../../speech_transformer" ]; then  # called in the checkout: set up the run folder's copy
    RUN_DIR=${RUN_DIR:-/var/tmp/st-distil}
    mkdir -p "$RUN_DIR"
    if [ ! -d "$RUN_DIR/$CODE" ]; then
        mkdir -p "$RUN_DIR/$CODE"
        cp -r "$HERE/../../speech_transformer" "$HERE/train.py" "$RUN_DIR/$CODE/"
        find "$RUN_DIR/$CODE" -name __pycache__ -prune -exec rm -rf {} \;
        git -C "$HERE" rev-parse HEAD > "$RUN_DIR/$CODE/GIT_HEAD"
    fi
    cp "$HERE/train.sh" "$RUN_DIR/train.sh"
    exec "$RUN_DIR/train.sh" "$@"
fi
cd "$HERE"
export PYTHONPATH=$PWD/$CODE OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
exec flock -n "$OUT.lock" python3 "$CODE/train.py" --run "$PWD" --out "$PWD/$OUT" \
    --v3 "$PWD/$CODE/speech_transformer/pretrained/default" --minutes "${MINUTES:-600}" --eval-minutes 10 "$@"
