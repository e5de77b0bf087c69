#!/usr/bin/env bash
# Everything the tests need, then the whole suite: the README's second command, and what .ci/run runs.
#   - Debian/Ubuntu packages: chromium + chromium-driver (the demo's browser tests) and the offline voices
#     espeak-ng, flite, festival (synthetic speech); installed with apt-get (through sudo unless root);
#   - the package in editable mode with its [test] extra (PyPI);
#   - then `python -m pytest -q`, with any arguments given here (e.g. ./test.sh tests/test_loading.py).
# Real speech is read from ../shared/data (or $SPEECH_TRANSFORMER_DATA); tests that need it skip without it.
set -euo pipefail
cd "$(dirname "$0")"
APT_PACKAGES=(chromium chromium-driver espeak-ng flite festival festvox-kallpc16k festvox-us-slt-hts libportaudio2)
if ! dpkg -s "${APT_PACKAGES[@]}" >/dev/null 2>&1; then
    sudo=$([ "$(id -u)" = 0 ] || echo sudo)
    $sudo apt-get update -qq
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${APT_PACKAGES[@]}"
fi
python3 -m pip install -q -e ".[test]"
exec python3 -m pytest -q "$@"
