#!/usr/bin/env bash
# Regenerates the clips of the per-session options tests (tests/e2e/test_session_options.py):
# names whisper base mishears without hotwords (flite's "rms" voice), and German
# (espeak-ng's "de" voice), which whisper told to expect English translates. 16 kHz mono
# 16-bit WAV. Needs Debian's flite, espeak-ng and sox.
set -euo pipefail
cd "$(dirname "$0")"
t=$(mktemp -d)
flite -voice rms -t "Please give the keys to Siobhan before noon." -o "$t/siobhan.wav"
flite -voice rms -t "The meeting with Krzysztof starts at nine." -o "$t/krzysztof.wav"
espeak-ng -v de -s 150 -w "$t/german.wav" \
  "Guten Morgen. Das Wetter ist heute sehr schön, und wir gehen in den Park."
for name in siobhan krzysztof german; do
  sox "$t/$name.wav" -r 16000 -c 1 -b 16 "$name.wav"
done
rm -rf "$t"
