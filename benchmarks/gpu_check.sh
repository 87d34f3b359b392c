#!/usr/bin/env bash
# GPU check of mgid on a lent GPU machine: build in place, CUDA tests, whole suite, compute-sanitizer
# (memcheck, racecheck) on the fused-op tests, and the CUDA benchmark.
#
# Run from the repository root:
#     bash benchmarks/gpu_check.sh                 # every step
#     bash benchmarks/gpu_check.sh build bench     # only these steps (env always runs)
# Steps, in order: env build build_info tests_cuda tests_all memcheck racecheck bench [bench_cpu]
# (bench_cpu, a CPU benchmark at the train shape on that machine's cores, runs only when named.)
# Where one command may run only so long, split the steps across calls on the same warm machine
# (the in-place build stays), e.g. `gpu_check.sh build build_info tests_cuda` then
# `gpu_check.sh memcheck racecheck` then `gpu_check.sh bench`; each call writes its own folder.
# Most of the bench's time is torch.compile of the reference at every shape (7 graphs a shape);
# BENCH_ARGS="--compile train,mnad_large" (or --compile train) shortens it.
#
# The machine's image (Python 3.12, torch 2.11.0+cu130, nvcc 13.0, ninja, pytest, ...) can install
# nothing and has no network: everything here uses what is installed.
#
# Everything goes to ${OUT:-benchmarks/results}/gpu-<UTC date>/ (or $GPU_CHECK_DIR): one log per step,
# env.txt, nvidia-smi.txt, the benchmark's markdown and JSON, and summary.txt / summary.md with each
# step's exit status and duration. A failing step does not stop the others; the script exits 1 at
# the end if any step failed (a missing tool counts as a failure: the check did not happen).
#
# Knobs (environment): PYTHON (default python, else python3), TORCH_CUDA_ARCH_LIST (9.0), MAX_JOBS (16),
# BUILD_MODE (setup = `setup.py build_ext --inplace`, pip = `pip install --no-build-isolation --no-deps -e .`),
# BENCH_ARGS (extra bench_ops.py arguments), SANITIZER_TESTS (tests/test_ops_fused.py),
# per-step time limits in seconds: BUILD_TIMEOUT (1200), TEST_TIMEOUT (1200), SANITIZER_TIMEOUT (1800),
# BENCH_TIMEOUT (1500).
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"

STAMP="$(date -u +%Y%m%dT%H%M%SZ)"
RESULTS="${GPU_CHECK_DIR:-${OUT:-benchmarks/results}/gpu-${STAMP}}"
mkdir -p "$RESULTS"
RESULTS="$(cd "$RESULTS" && pwd)"

if [[ -n "${PYTHON:-}" ]]; then
    PY="$PYTHON"
elif command -v python >/dev/null 2>&1; then
    PY=python
else
    PY=python3
fi
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
export MAX_JOBS="${MAX_JOBS:-16}"
export PYTHONUNBUFFERED=1
# Tests and benchmarks import the in-place build from the repository root.
export PYTHONPATH="$REPO_ROOT${PYTHONPATH:+:$PYTHONPATH}"

ALL_STEPS=(build build_info tests_cuda tests_all memcheck racecheck bench)
if [[ $# -gt 0 ]]; then
    STEPS=("$@")
else
    STEPS=("${ALL_STEPS[@]}")
fi
for s in "${STEPS[@]}"; do
    case "$s" in
        env|build|build_info|tests_cuda|tests_all|memcheck|racecheck|bench|bench_cpu) ;;
        *) echo "gpu_check.sh: unknown step '$s' (steps: env ${ALL_STEPS[*]} bench_cpu)" >&2; exit 2 ;;
    esac
done

SUMMARY="$RESULTS/summary.txt"
: > "$SUMMARY"
FAILED=0

wanted() {  # wanted STEP: true when STEP was asked for
    local s
    for s in "${STEPS[@]}"; do [[ "$s" == "$1" ]] && return 0; done
    return 1
}

record() {  # record NAME RC SECONDS NOTE
    local status=ok
    [[ "$2" -ne 0 ]] && { status=FAILED; FAILED=1; }
    printf '%-12s %-7s rc=%-4s %6ss  %s\n' "$1" "$status" "$2" "$3" "$4" | tee -a "$SUMMARY"
}

run_step() {  # run_step NAME TIMEOUT_S CMD...: run CMD with its output in NAME.log, record its status
    local name="$1" limit="$2"
    shift 2
    local log="$RESULTS/$name.log" rc start
    echo "=== [$name] $*" | tee "$log"
    start=$(date +%s)
    set +e
    timeout --kill-after=30 "$limit" "$@" >>"$log" 2>&1
    rc=$?
    set -e
    local note="$name.log"
    [[ $rc -eq 124 || $rc -eq 137 ]] && note="$note (timed out after ${limit}s)"
    [[ $rc -eq 5 && "$name" == tests_* ]] && note="$note (pytest collected no tests)"
    echo "--- [$name] exit $rc; last lines of $log:"
    tail -n 15 "$log" | sed 's/^/    /'
    record "$name" "$rc" "$(( $(date +%s) - start ))" "$note"
    return 0
}

find_sanitizer() {  # prints the path of compute-sanitizer, or nothing
    local c
    if command -v compute-sanitizer >/dev/null 2>&1; then command -v compute-sanitizer; return; fi
    for c in /usr/local/cuda/bin/compute-sanitizer /usr/local/cuda*/bin/compute-sanitizer \
             /usr/local/cuda*/compute-sanitizer/compute-sanitizer /opt/nvidia/*/compute-sanitizer/compute-sanitizer; do
        [[ -x "$c" ]] && { echo "$c"; return; }
    done
    if command -v nvcc >/dev/null 2>&1; then  # next to the real nvcc, when the one on PATH is a wrapper
        c="$(dirname "$(readlink -f "$(command -v nvcc)")")/compute-sanitizer"
        [[ -x "$c" ]] && { echo "$c"; return; }
    fi
    return 0
}

# --- env: always recorded ---------------------------------------------------------------------
{
    echo "date_utc: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "host: $(hostname)"
    echo "repo: $REPO_ROOT"
    echo "git commit: $(git rev-parse HEAD 2>/dev/null || echo unknown)"
    echo "git changed files: $( (git status --porcelain 2>/dev/null || true) | wc -l | tr -d ' ')"
    echo "steps: ${STEPS[*]}"
    echo "python: $(command -v "$PY") ($("$PY" --version 2>&1))"
    echo "nvcc: $(command -v nvcc || echo 'not on PATH')"
    nvcc --version 2>&1 | tail -n 2 || true
    echo "CUDA_HOME: ${CUDA_HOME:-unset}"
    echo "TORCH_CUDA_ARCH_LIST: $TORCH_CUDA_ARCH_LIST  MAX_JOBS: $MAX_JOBS"
    echo "compute-sanitizer: $(find_sanitizer || true)"
    echo "nproc: $(nproc)"
    "$PY" - <<'EOF' 2>&1 || true
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("gpu", p.name, f"sm_{p.major}{p.minor}", f"{p.total_memory / 2**30:.1f} GiB")
EOF
} > "$RESULTS/env.txt" 2>&1
if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi > "$RESULTS/nvidia-smi.txt" 2>&1 || echo "nvidia-smi failed (rc $?)" >> "$RESULTS/nvidia-smi.txt"
    nvidia-smi -q >> "$RESULTS/nvidia-smi.txt" 2>&1 || true
else
    echo "nvidia-smi not found on PATH" > "$RESULTS/nvidia-smi.txt"
fi
cat "$RESULTS/env.txt"
head -n 15 "$RESULTS/nvidia-smi.txt"
echo "results: $RESULTS"

# --- build ------------------------------------------------------------------------------------
if wanted build; then
    if [[ "${BUILD_MODE:-setup}" == pip ]]; then
        run_step build "${BUILD_TIMEOUT:-1200}" "$PY" -m pip install --no-build-isolation --no-deps -v -e .
    elif [[ -f setup.py ]]; then
        run_step build "${BUILD_TIMEOUT:-1200}" "$PY" setup.py build_ext --inplace
    else
        echo "setup.py not found" > "$RESULTS/build.log"
        record build 127 0 "setup.py not found"
    fi
fi

if wanted build_info; then
    run_step build_info 300 "$PY" -c '
import torch, mgid.ops as o
info = o.build_info()
print("build_info:", info)
print("op_path(cuda):", o.op_path("cuda"))
assert info.get("extension"), "mgid._C did not load"
assert info.get("cuda"), "the extension was built without CUDA kernels"
assert o.fused_available("cuda"), "fused_available(cuda) is False"
'
fi

# --- tests ------------------------------------------------------------------------------------
if wanted tests_cuda; then
    run_step tests_cuda "${TEST_TIMEOUT:-1200}" "$PY" -m pytest -m cuda -q -rs \
        --junitxml="$RESULTS/tests_cuda.xml"
fi
if wanted tests_all; then
    run_step tests_all "${TEST_TIMEOUT:-1200}" "$PY" -m pytest -q -rs --junitxml="$RESULTS/tests_all.xml"
fi

# --- compute-sanitizer ------------------------------------------------------------------------
SANITIZER_TESTS="${SANITIZER_TESTS:-tests/test_ops_fused.py}"
for tool in memcheck racecheck; do
    wanted "$tool" || continue
    SAN="$(find_sanitizer || true)"
    if [[ -z "$SAN" ]]; then
        echo "compute-sanitizer not found on PATH or under /usr/local/cuda*/" > "$RESULTS/$tool.log"
        record "$tool" 127 0 "compute-sanitizer not found"
        continue
    fi
    extra=()
    # memcheck: without PyTorch's caching allocator every tensor is its own allocation, so an
    # out-of-bounds access that would land in another cached block is reported.
    [[ "$tool" == memcheck ]] && extra=(env PYTORCH_NO_CUDA_MEMORY_CACHING=1)
    run_step "$tool" "${SANITIZER_TIMEOUT:-1800}" "${extra[@]}" "$SAN" --tool "$tool" --error-exitcode 99 \
        --print-limit 200 "$PY" -m pytest -m cuda "$SANITIZER_TESTS" -q -x -p no:cacheprovider
    grep -E "ERROR SUMMARY|RACECHECK SUMMARY|hazard" "$RESULTS/$tool.log" | tail -n 5 || true
done

# --- benchmarks -------------------------------------------------------------------------------
if wanted bench; then
    # shellcheck disable=SC2086  # BENCH_ARGS is a list of words on purpose
    run_step bench "${BENCH_TIMEOUT:-1500}" "$PY" benchmarks/bench_ops.py --device cuda --out "$RESULTS" \
        ${BENCH_ARGS:-}
fi
if wanted bench_cpu; then
    run_step bench_cpu "${BENCH_TIMEOUT:-1500}" "$PY" benchmarks/bench_ops.py --device cpu --shapes train \
        --out "$RESULTS"
fi

# --- summary ----------------------------------------------------------------------------------
{
    echo "# gpu_check $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo
    echo "- commit: $(git rev-parse HEAD 2>/dev/null || echo unknown)"
    echo "- GPU: $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -n 1 || echo unknown)"
    echo "- overall: $([[ $FAILED -eq 0 ]] && echo 'all steps passed' || echo '**some steps failed**')"
    echo
    echo '```'
    cat "$SUMMARY"
    echo '```'
    for md in "$RESULTS"/bench_ops_*.md; do
        [[ -f "$md" ]] || continue
        echo
        cat "$md"
    done
} > "$RESULTS/summary.md"
echo "=== summary ($RESULTS)"
cat "$SUMMARY"
exit "$FAILED"
