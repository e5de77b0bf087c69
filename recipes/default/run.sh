#!/usr/bin/env bash
# Train the embedded default model with the LibriSpeech recipe's stages (see ../librispeech/run.py):
#   ./run.sh                          # conf/cpu_tiny.yaml, all stages
#   ./run.sh --stage 6                # rescore only
# The result lands in exp/cpu_tiny/model; copy it into speech_transformer/pretrained/default to ship it.
set -euo pipefail
cd "$(dirname "$0")"
config=conf/cpu_tiny.yaml
if [[ ${1:-} == --config ]]; then config=$2; shift 2; fi
exec python ../librispeech/run.py --config "$config" "$@"
