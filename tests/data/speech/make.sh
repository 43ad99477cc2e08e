#!/usr/bin/env bash
# Regenerates the word-error-rate set: one 16 kHz mono 16-bit WAV per line of
# sentences.txt (everyday English), spoken by flite's "rms" voice. Needs Debian's
# flite and sox. flite and espeak-ng voices on the Harvard sentences gave whisper
# base 8-20 % WER, mostly the voices' pronunciation; see bench/RESULTS.md.
set -euo pipefail
cd "$(dirname "$0")"
n=0
while IFS= read -r line; do
  n=$((n + 1))
  name=$(printf "%02d" "$n")
  flite -voice rms -t "$line" -o "/tmp/hark-$name.wav"
  sox "/tmp/hark-$name.wav" -r 16000 -c 1 -b 16 "$name.wav"
  rm -f "/tmp/hark-$name.wav"
done < sentences.txt
