#!/usr/bin/env bash
# GPU benchmark driver for a lent H100/H200: finds or makes a Python with CUDA torch, then runs
#   1. bench/gpu_decode.py: herd compiled bf16 decode of llama3.2-1b vs the copy-bandwidth
#      roofline, and transformers' generate on the same weights;
#   2. bench/gpu_train.py: training MFU of llama3.2-1b (batch 4 x 2048, bf16 autocast, fused
#      AdamW), herd compiled vs transformers' LlamaForCausalLM (eager, and compiled if time allows).
# Run from the repository root:
#
#     bash bench/gpu.sh [extra gpu_decode.py options]
#     GPU_BENCH=train GPU_TRAIN_ARGS="--activation-checkpointing" bash bench/gpu.sh
#
#   3. bench/serve.py (only when GPU_BENCH names "serve"): herd serve vs transformers serve
#      (continuous batching) at 1/4/16/32 streamed clients, and herd's prefix cache on/off, bf16.
#
#     GPU_BENCH=serve bash bench/gpu.sh          # GPU_SERVE_ARGS adds serve.py options
#
# GPU_BENCH (default "decode train") picks the benchmarks; GPU_TRAIN_ARGS adds gpu_train.py options.
#
# Works on a bare machine with only the repository copied. Python, in order of preference:
#   1. .venv-gpu/bin/python if it already imports torch with CUDA;
#   2. the system python3 if it imports torch with CUDA (reused through a --system-site-packages
#      venv when safetensors/numpy/tqdm/tokenizers/transformers are missing);
#   3. a fresh .venv-gpu with torch and the rest from PyPI (a few minutes of downloads).
# With no package index (the lent H200s reach nothing), packages the image lacks (fastapi,
# uvicorn, openai, prometheus-client for serve) come from wheels downloaded beforehand:
#   pip install --no-index --find-links WHEELS --target /tmp/extra ...; PYTHONPATH=/tmp/extra
# herd itself is found through PYTHONPATH (no install step). Results, when OUT is set: $OUT/gpu.json
# and $OUT/gpu.log (decode), $OUT/gpu_train.json and $OUT/gpu_train.log (training),
# $OUT/gpu_serve.json and $OUT/gpu_serve.log (serving). Each benchmark
# runs under its own hard time limit (below); the whole script is kept near 9 minutes.
set -uo pipefail

cd "$(dirname "$0")/.." || exit 2
ROOT=$(pwd)
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PIP_DISABLE_PIP_VERSION_CHECK=1
VENV=.venv-gpu
NEEDED="safetensors numpy tqdm tokenizers transformers"
BENCHES=${GPU_BENCH:-decode train}
# herd serve, transformers serve and the load generator
case " $BENCHES " in *" serve "*) NEEDED="$NEEDED fastapi uvicorn httpx openai" ;; esac
# Seconds from the start by which everything should be done (the caller's window is ~10 minutes).
DEADLINE=540
T0=$SECONDS

log() { echo "[gpu.sh +$((SECONDS - T0))s] $*" >&2; }

has_cuda_torch() {
    "$1" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' >/dev/null 2>&1
}

missing_modules() {
    "$1" - "$NEEDED" <<'EOF' 2>/dev/null
import importlib.util, sys
print(" ".join(m for m in sys.argv[1].split() if importlib.util.find_spec(m) is None))
EOF
}

pip_install() { # python, packages...
    local py=$1
    shift
    log "pip install $*"
    timeout 420 "$py" -m pip install --quiet "$@" || log "pip install failed (exit $?); going on"
}

PY=""
if [ -x "$VENV/bin/python" ] && has_cuda_torch "$VENV/bin/python"; then
    PY=$VENV/bin/python
elif command -v python3 >/dev/null && has_cuda_torch python3; then
    PY=$(command -v python3)
    if [ -n "$(missing_modules "$PY")" ]; then
        log "system python3 has CUDA torch; adding missing packages in $VENV (system site-packages)"
        rm -rf "$VENV"
        python3 -m venv --system-site-packages "$VENV" && PY=$VENV/bin/python
        # shellcheck disable=SC2046
        pip_install "$PY" $(missing_modules "$PY")
    fi
else
    log "no CUDA torch found; creating $VENV and installing torch from PyPI"
    command -v python3 >/dev/null || { log "python3 not found"; exit 2; }
    rm -rf "$VENV"
    python3 -m venv "$VENV" || { log "python3 -m venv failed"; exit 2; }
    PY=$VENV/bin/python
    pip_install "$PY" --upgrade pip
    # shellcheck disable=SC2086
    pip_install "$PY" torch $NEEDED
fi

if ! has_cuda_torch "$PY"; then
    log "$PY cannot use CUDA:"
    "$PY" -c 'import torch; print(torch.__version__, torch.version.cuda, torch.cuda.is_available())'
    exit 2
fi
still_missing=$(missing_modules "$PY")
if [ -n "$still_missing" ] && [ "$PY" = "$VENV/bin/python" ]; then
    # shellcheck disable=SC2086
    pip_install "$PY" $still_missing
    still_missing=$(missing_modules "$PY")
fi
[ -n "$still_missing" ] && log "still missing: $still_missing (the benchmarks skip what they can)"
"$PY" -c 'import herd' || { log "herd does not import with $PY"; exit 2; }

log "python: $PY ($("$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)'))"
command -v nvidia-smi >/dev/null &&
    nvidia-smi --query-gpu=name,memory.total,clocks.max.memory,driver_version --format=csv >&2

[ -n "${OUT:-}" ] && mkdir -p "$OUT"

# Run a benchmark script under a hard time limit, its output also in $OUT/<log> when OUT is set.
run_bench() { # seconds, log name, script, args...
    local limit=$1 logname=$2 script=$3 rc
    shift 3
    log "running $script (hard stop after ${limit}s)"
    if [ -n "${OUT:-}" ]; then
        timeout "$limit" "$PY" "$script" "$@" 2>&1 | tee "$OUT/$logname"
        rc=${PIPESTATUS[0]}
    else
        timeout "$limit" "$PY" "$script" "$@"
        rc=$?
    fi
    [ "$rc" -eq 124 ] && log "$script hit its ${limit}s limit (its JSON keeps the finished stages)"
    log "$script exited with $rc"
    return "$rc"
}

decode_rc=0
train_rc=0

case " $BENCHES " in
*" decode "*)
    ARGS=()
    [ -n "${OUT:-}" ] && ARGS+=(--out "$OUT/gpu.json")
    case " $still_missing " in
    *" transformers "*) ARGS+=(--no-hf --no-hf-static) ;;
    esac
    # Finish by ~300 s so training keeps its ~4 minutes: the script skips the static-cache
    # transformers run when its --budget-s has passed, and the timeout is the hard stop.
    left=$((DEADLINE - 240 - (SECONDS - T0)))
    [ "$left" -lt 120 ] && left=120
    # The static-cache transformers run (compile + 4 generations) needs about 150 s of what is left.
    budget=$((left - 150))
    [ "$budget" -lt 0 ] && budget=0
    ARGS+=(--budget-s "$budget")
    run_bench "$left" gpu.log bench/gpu_decode.py ${ARGS[@]+"${ARGS[@]}"} "$@"
    decode_rc=$?
    ;;
esac

case " $BENCHES " in
*" train "*)
    ARGS=()
    [ -n "${OUT:-}" ] && ARGS+=(--out "$OUT/gpu_train.json")
    case " $still_missing " in
    *" transformers "*) ARGS+=(--no-hf --no-hf-compile) ;;
    esac
    # Up to 300 s, less if decoding ran long. The required stages (weights for transformers, herd
    # compiled, transformers eager) take about 2 minutes; the optional ones (herd eager, then
    # transformers compiled, ~90 s of compilation) start only before --budget-s.
    left=$((DEADLINE - (SECONDS - T0)))
    [ "$left" -gt 300 ] && left=300
    if [ "$left" -lt 90 ]; then
        log "skipping bench/gpu_train.py: only ${left}s left of the ${DEADLINE}s window"
        train_rc=2
    else
        budget=$((left - 110))
        [ "$budget" -lt 0 ] && budget=0
        ARGS+=(--budget-s "$budget")
        # shellcheck disable=SC2086
        run_bench "$left" gpu_train.log bench/gpu_train.py ${ARGS[@]+"${ARGS[@]}"} ${GPU_TRAIN_ARGS:-}
        train_rc=$?
    fi
    ;;
esac

serve_rc=0
case " $BENCHES " in
*" serve "*)
    ARGS=(--device cuda)
    [ -n "${OUT:-}" ] && ARGS+=(--out "$OUT/gpu_serve.json")
    left=$((DEADLINE - (SECONDS - T0)))
    if [ "$left" -lt 120 ]; then
        log "skipping bench/serve.py: only ${left}s left of the ${DEADLINE}s window"
        serve_rc=2
    else
        # shellcheck disable=SC2086
        run_bench "$left" gpu_serve.log bench/serve.py "${ARGS[@]}" ${GPU_SERVE_ARGS:-}
        serve_rc=$?
    fi
    ;;
esac

log "done: decode exit $decode_rc, train exit $train_rc, serve exit $serve_rc"
[ "$decode_rc" -ne 0 ] && exit "$decode_rc"
[ "$train_rc" -ne 0 ] && exit "$train_rc"
exit "$serve_rc"
