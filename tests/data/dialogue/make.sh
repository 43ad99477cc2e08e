#!/usr/bin/env bash
# Regenerates the dialogue test set (tests/speech.py's `dialogue`): each line of
# turns.txt (voice TAB text) spoken by that flite voice (slt: a woman; rms and kal16:
# two men), as NN.wav, 16 kHz mono 16-bit, trimmed of flite's leading and trailing
# quiet. Who spoke when is computed from these and the gaps a test chooses. Needs
# Debian's flite and sox.
set -euo pipefail
cd "$(dirname "$0")"
t=$(mktemp -d)
n=0
while IFS=$'\t' read -r voice text; do
  n=$((n + 1))
  flite -voice "$voice" -t "$text" -o "$t/raw.wav"
  sox "$t/raw.wav" -r 16000 -c 1 -b 16 "$(printf '%02d' "$n").wav" \
    silence 1 0.02 0.5% reverse silence 1 0.02 0.5% reverse pad 0.05 0.05
done < turns.txt
rm -rf "$t"
