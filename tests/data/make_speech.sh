#!/usr/bin/env bash
# Regenerates two_sentences.wav: two Harvard sentences (IEEE 1969, public domain)
# spoken by flite's "rms" voice, 1 s of silence between them, 0.3 s after.
# 16 kHz mono 16-bit. Needs Debian's flite and sox.
set -euo pipefail
cd "$(dirname "$0")"
t=$(mktemp -d)
flite -voice rms -t "The juice of lemons makes fine punch." -o "$t/a.wav"
flite -voice rms -t "The boy was there when the sun rose." -o "$t/b.wav"
sox -n -r 16000 -c 1 -b 16 "$t/gap.wav" trim 0 1.0
sox -n -r 16000 -c 1 -b 16 "$t/end.wav" trim 0 0.3
sox "$t/a.wav" "$t/gap.wav" "$t/b.wav" "$t/end.wav" -r 16000 -c 1 -b 16 two_sentences.wav
rm -rf "$t"
