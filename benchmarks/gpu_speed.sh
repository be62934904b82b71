#!/usr/bin/env bash
# The real-size GPU benchmark (benchmarks/gpu_speed.py) on a fresh GPU machine, time-boxed to ~9 minutes.
#
#   bash benchmarks/gpu_speed.sh [more gpu_speed.py flags]      # from the repository root (any cwd works)
#
# The machine needs python3 with a CUDA build of torch. Nothing else is downloaded if it is there already:
# diffusers (the one package such an image usually lacks) is installed from wheels in ./.whl when present
# (`pip download --no-deps --only-binary=:all: -d .whl diffusers==0.42.1` on a machine with network, then carry
# .whl along), else from the package index; hyca_batch is used from this tree (PYTHONPATH), and installed with
# pip from it only if that fails. Outputs land in $OUT (default ./outputs/gpu_speed): gpu_speed.json, log.txt,
# RESULTS.md (benchmarks/RESULTS.md with the new table appended) and the HyCa solver map(s).
#
# Time box: BUDGET_S (default 470) is the benchmark's --time-budget-s (configurations that would not finish in
# it are skipped and listed), HARD_S (default 570) kills it outright; the JSON is rewritten after every
# configuration, so a run cut short keeps what it measured. One H200: --sp stays 1 (pass --sp 1 2 4 8 on a
# machine with more GPUs).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
OUT="${OUT:-$ROOT/outputs/gpu_speed}"
mkdir -p "$OUT"
LOG="$OUT/log.txt"
PY="${PYTHON:-python3}"
BUDGET_S="${BUDGET_S:-470}"
HARD_S="${HARD_S:-570}"
export PYTHONUNBUFFERED=1
: >"$LOG"
say() { echo "[gpu_speed.sh] $*" | tee -a "$LOG"; }

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true; } 2>&1 | tee -a "$LOG"

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>>"$LOG"; then
    say "$PY has no CUDA torch; trying pip install torch"
    "$PY" -m pip install -q torch 2>&1 | tee -a "$LOG"
    "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" || { say "no CUDA torch: stop"; exit 2; }
fi

if ! "$PY" -c "import diffusers" 2>/dev/null; then
    if compgen -G "$ROOT/.whl/*.whl" >/dev/null; then
        say "installing $(ls "$ROOT"/.whl/*.whl | xargs -n1 basename | tr '\n' ' ')from .whl"
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/gpu-speed-site \
            "$ROOT"/.whl/*.whl 2>&1 | tee -a "$LOG"
        export PYTHONPATH="/tmp/gpu-speed-site${PYTHONPATH:+:$PYTHONPATH}"
    else
        say "diffusers missing and no .whl/: pip install from the index"
        "$PY" -m pip install -q "diffusers>=0.35,<0.43" 2>&1 | tee -a "$LOG"
    fi
fi

export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
if ! "$PY" -c "import hyca_batch.cache.calibrate" 2>>"$LOG"; then
    say "hyca_batch does not import from the tree; pip install -e . (needs its dependencies)"
    "$PY" -m pip install -q -e "$ROOT" 2>&1 | tee -a "$LOG"
fi
"$PY" -c "import torch, diffusers; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'diffusers', diffusers.__version__, torch.cuda.get_device_name(0))" 2>&1 | tee -a "$LOG"

cp "$ROOT/benchmarks/RESULTS.md" "$OUT/RESULTS.md" 2>/dev/null || true
say "benchmark: budget ${BUDGET_S}s, hard limit ${HARD_S}s"
timeout --signal=TERM --kill-after=20 "$HARD_S" "$PY" "$ROOT/benchmarks/gpu_speed.py" \
    --sizes 544x960x129 720x1280x129 --modes none taylorseer hyca --steps 50 --loop prefix \
    --time-budget-s "$BUDGET_S" --json "$OUT/gpu_speed.json" --results-md "$OUT/RESULTS.md" "$@" 2>&1 | tee -a "$LOG"
status=${PIPESTATUS[0]}
say "exit status $status"
exit "$status"
