#!/usr/bin/env bash
# Train the embedded default model, then ship it. The shipped model (v3) comes from the first line:
#   ./run.sh student [--minutes 55]   # Whisper base's stem + all 6 encoder blocks and a new 2-block decoder
#                                     # as exp/whisper-student6, then train_cached.py: blocks 0-4 frozen and
#                                     # cached once, block 5 + heads trained on the cache
#                                     # -> exp/cached6/{best,last,log.jsonl}
# or with the LibriSpeech recipe's stages (see ../librispeech/run.py):
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
if [[ ${1:-} == student ]]; then
    shift
    [[ -f exp/whisper-student6/config.json ]] || "$python" -m speech_transformer.apps.whisper_cli base --student 6 \
        --decoder-layers 2 --tokenizer-from ../../speech_transformer/pretrained/default -o exp/whisper-student6
    exec "$python" train_cached.py --student exp/whisper-student6 --out exp/cached6 --frozen 5 --threads 2 "$@"
fi
config=conf/cpu_tiny.yaml
if [[ ${1:-} == --config ]]; then config=$2; shift 2; fi
exec "$python" ../librispeech/run.py --config "$config" "$@"
