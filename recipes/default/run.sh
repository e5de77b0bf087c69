#!/usr/bin/env bash
# Train the embedded default model with the LibriSpeech recipe's stages (see ../librispeech/run.py), then ship it:
#   ./run.sh                          # conf/cpu_tiny.yaml, stages 1-6 (data, tokenizer, train, average, decode)
#   ./run.sh --stage 6                # rescore only
#   ./run.sh --config conf/X.yaml     # another config (first argument); --exp DIR for another experiment folder
#   ./run.sh ship --hardware "..." --report an4-test=an4-test.json ... --regression
#                                     # stage 7: float16 copy of exp/cpu_tiny/model + MODEL_CARD.md into
#                                     # speech_transformer/pretrained/default (README.md here; ship.py --help)
# PYTHON picks the interpreter (default: python).
set -euo pipefail
python=${PYTHON:-python}
if [[ ${1:-} == ship ]]; then  # before the cd below: report paths stay relative to the caller's folder
    shift
    exec "$python" "$(dirname "$0")/ship.py" "$@"
fi
cd "$(dirname "$0")"
config=conf/cpu_tiny.yaml
if [[ ${1:-} == --config ]]; then config=$2; shift 2; fi
exec "$python" ../librispeech/run.py --config "$config" "$@"
