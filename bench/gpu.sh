#!/usr/bin/env bash
# GPU decode benchmark driver for a lent H100/H200: finds or makes a Python with CUDA torch, then
# runs bench/gpu_decode.py (herd compiled bf16 decode of llama3.2-1b vs the copy-bandwidth
# roofline, and transformers' generate on the same weights). Run from the repository root:
#
#     bash bench/gpu.sh [extra gpu_decode.py options]
#
# Works on a bare machine with only the repository copied. Python, in order of preference:
#   1. .venv-gpu/bin/python if it already imports torch with CUDA;
#   2. the system python3 if it imports torch with CUDA (reused through a --system-site-packages
#      venv when safetensors/numpy/tqdm/tokenizers/transformers are missing);
#   3. a fresh .venv-gpu with torch and the rest from PyPI (a few minutes of downloads).
# herd itself is found through PYTHONPATH (no install step). Results: $OUT/gpu.json and
# $OUT/gpu.log when OUT is set. Total runtime is kept near 6 minutes (timeouts below).
set -uo pipefail

cd "$(dirname "$0")/.." || exit 2
ROOT=$(pwd)
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PIP_DISABLE_PIP_VERSION_CHECK=1
VENV=.venv-gpu
NEEDED="safetensors numpy tqdm tokenizers transformers"
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
[ -n "$still_missing" ] && log "still missing: $still_missing (gpu_decode.py skips what it can)"
"$PY" -c 'import herd' || { log "herd does not import with $PY"; exit 2; }

log "python: $PY ($("$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)'))"
command -v nvidia-smi >/dev/null &&
    nvidia-smi --query-gpu=name,memory.total,clocks.max.memory,driver_version --format=csv >&2

ARGS=()
if [ -n "${OUT:-}" ]; then
    mkdir -p "$OUT"
    ARGS+=(--json "$OUT/gpu.json")
fi
case " $still_missing " in
*" transformers "*) ARGS+=(--no-hf --no-hf-static) ;;
esac

# Leave room inside the caller's ~6 minute window: the script skips the static-cache transformers
# run when its --budget-s has passed, and this timeout is the hard stop.
left=$((360 - (SECONDS - T0)))
[ "$left" -lt 120 ] && left=120
# The static-cache transformers run (compile + 4 generations) needs about 150 s of what is left.
budget=$((left - 150))
[ "$budget" -lt 0 ] && budget=0
ARGS+=(--budget-s "$budget")
log "running bench/gpu_decode.py (hard stop after ${left}s)"
if [ -n "${OUT:-}" ]; then
    timeout "$left" "$PY" bench/gpu_decode.py ${ARGS[@]+"${ARGS[@]}"} "$@" 2>&1 | tee "$OUT/gpu.log"
    rc=${PIPESTATUS[0]}
else
    timeout "$left" "$PY" bench/gpu_decode.py ${ARGS[@]+"${ARGS[@]}"} "$@"
    rc=$?
fi
log "gpu_decode.py exited with $rc"
exit "$rc"
