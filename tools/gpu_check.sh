#!/usr/bin/env bash
# GPU check of mgid on the lent GPU machine (one NVIDIA H200, sm_90; python3 3.12 with torch 2.11+cu130,
# nvcc 13, ninja, pytest, compute-sanitizer; no package index, no network), as ONE command that ends
# within 8 minutes (default budget 470 s, summary included), so that it works the first time.
#
# ONE CALL on the lent machine (the device tool), from a checkout here that has the wheel folder:
#     1. here, once (needs pip's index; the folder is git-ignored, ~0.25 MiB):
#            .venv/bin/python -m tools.make_wheelhouse      # prints the call below, commit filled in
#     2. the device tool:
#            run(command='GPU_CHECK_COMMIT=<git rev-parse HEAD here> bash tools/gpu_check.sh',
#                carry=['tools/wheelhouse'], timeout_s=570)
#        The results come back as $OUT/gpu-<UTC stamp>/ with 4 files (the tool returns at most 8 files,
#        two folders deep). Then give_back, unless a rerun follows at once. A rerun of some stages on the
#        still-warm machine (the in-place build and the wheels in /tmp stay), e.g. a sanitizer that ran out of
#        time: `MEMCHECK_TIMEOUT=200 RACECHECK_TIMEOUT=200 bash tools/gpu_check.sh memcheck racecheck`.
#     Limits sum to 440 s before the suite; the suite gets what is left of the 470 s (typically 2-4 minutes).
#     Here, without a GPU:  bash tools/gpu_check.sh --dry-run   (tests/benchmarks/test_gpu_check.py runs it)
#
# Usage: gpu_check.sh [--dry-run] [STAGE ...]     (no STAGE: all; the others are listed as not selected)
# Stages, in order, each under `timeout` with its own limit (seconds), clamped to what is left of the budget:
#   wheels      (20)  pip install --no-index --no-deps --target $GPU_CHECK_SITE of what the machine lacks
#                     (kmeans1d) from the carried wheel folder; the target goes on PYTHONPATH. A missing
#                     wheel fails this stage only: the suite then says which of its tests need it.
#   build      (150)  TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16 MGID_FORCE_CUDA=1 python3 setup.py build_ext --inplace
#                     (BUILD_MODE=pip: pip install --no-build-isolation --no-deps -e .), then mgid.ops.build_info()
#                     must show the CUDA kernels for that arch, built against the torch that runs.
#   tests_cuda  (90)  pytest -m cuda (fails if every CUDA test skipped).
#   bench_ops   (60)  python -m benchmarks.bench_ops --device cuda --shapes "train,infer1k,mnad_large" --compile none
#                     --repeats 20 --max-seconds 0.25 (BENCH_OPS_ARGS are appended and win, e.g. "--compile train").
#   bench_train (40)  python -m benchmarks.bench_train --device cuda: the training step as `mgid train` runs it
#                     (MGIDObjective + optimizer_step, between torch.cuda.synchronize() calls) of the `paper` config
#                     (B 8, 256x256), fused vs reference ops x fp32 vs bf16 autocast, 3 warm-up + 10 timed steps
#                     each, no compile, no loss curve; its report is kept as bench_train.json/.md. TRAIN_ARGS appended.
#   memcheck    (40)  compute-sanitizer --tool memcheck (PYTORCH_NO_CUDA_MEMORY_CACHING=1) and
#   racecheck   (40)  --tool racecheck, each on a few small CUDA tests: pytest -m cuda tests/ops/test_ops_fused.py tests/ops/test_memory_step.py
#                     -k "$SANITIZER_K" (read/update/losses/bsw against the reference).
#   suite    (rest)   the whole suite, pytest -q (-n $SUITE_WORKERS with pytest-xdist, default 8), but
#                     tests/benchmarks/test_gpu_check.py; skipped with a note when less than SUITE_MIN_S (40) is left.
# A failing stage does not stop the later ones; the exit code is 1 when any stage FAILED, else 0.
#
# --dry-run (here, CPU only; the GPU is hidden with CUDA_VISIBLE_DEVICES= even where one exists): the same
# stages and layout. wheels installs into a throwaway folder; build does NOT rebuild an existing extension
# (it says so, prints the command it would run and checks the extension loads; it builds only when no
# mgid/_C*.so exists for this python); pytest -m cuda runs (its tests skip); bench_ops --quick on the CPU
# (train shape, fused and reference, 2 samples); bench_train on the CPU at batch 1, crop 32, 1 step;
# memcheck/racecheck and the suite are skipped with the reason.
#
# Output: ${GPU_CHECK_DIR:-${OUT:-benchmarks/results}/gpu-<UTC stamp>}/ (flat, a few hundred KB):
#   summary.json  mode, date, commit (+ where it came from), device (nvidia-smi), driver, torch, CUDA (torch
#                 and nvcc), python, build_info, budget, and every stage in order: status (ok / FAILED /
#                 skipped), exit code, seconds, limit, note, command; plus the benchmarks' headline results.
#   summary.md    the same as a table, the benchmarks' markdown tables, the last lines of each failed stage.
#   logs.txt      env, nvidia-smi and every stage's log (each cut to its last LOG_KEEP bytes, 200 KB).
#   files.tar.gz  the stage logs, junit XML, bench_ops_*.json/.md, bench_train.json/.md, build_info.json,
#                 env.json, nvidia-smi -q (read: tar -xzf files.tar.gz -C /tmp/x).
# The Python that no benchmark does (environment, build check, summary files) is tools/gpu_report.py.
# Stages write into a work folder under $TMPDIR (/tmp) first; the summary files are rewritten after every
# stage, so a run cut short still leaves them.
#
# Knobs (environment):
#   PYTHON            interpreter (default: .venv/bin/python if present, else python3, else python)
#   GPU_CHECK_COMMIT  commit to report where the copy has no .git (else the wheel folder's COMMIT file)
#   GPU_CHECK_WHEELS  wheel folder (tools/wheelhouse); GPU_CHECK_SITE install target (/tmp/mgid-gpu-check-site)
#   GPU_CHECK_BUDGET  seconds for the whole run (470); GPU_CHECK_RESERVE kept for the summary (10)
#   GPU_CHECK_DIR     results folder (default above); GPU_CHECK_KEEP_WORK=1 keeps the work folder
#   GPU_CHECK_FAIL_STAGE=NAME  replaces that stage's command by one that fails (to test the reporting)
#   <STAGE>_TIMEOUT   per-stage limit, e.g. BUILD_TIMEOUT=150, TESTS_CUDA_TIMEOUT, BENCH_OPS_TIMEOUT, ...
#   TORCH_CUDA_ARCH_LIST (9.0), MAX_JOBS (16), BUILD_MODE (setup|pip), BENCH_OPS_ARGS, TRAIN_ARGS,
#   SANITIZER_K, SUITE_WORKERS (8; 0 = no xdist), SUITE_MIN_S (40), SUITE_ARGS, LOG_KEEP (204800)
# shellcheck disable=SC2317,SC2016  # post_* hooks are called by name; bash -c programs are single-quoted
set -uo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT" || exit 2

ALL_STAGES=(wheels build tests_cuda bench_ops bench_train memcheck racecheck suite)
declare -A DEFAULT_LIMIT=([wheels]=20 [build]=150 [tests_cuda]=90 [bench_ops]=60 [bench_train]=40
                          [memcheck]=40 [racecheck]=40 [suite]=0)

usage() { sed -n '2,/^# shellcheck disable/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'; }

DRY_RUN=0
SELECTED=()
for arg in "$@"; do
    case "$arg" in
        --dry-run) DRY_RUN=1 ;;
        -h|--help) usage; exit 0 ;;
        -*) echo "gpu_check.sh: unknown option '$arg' (--dry-run, --help)" >&2; exit 2 ;;
        *)
            if [[ -z "${DEFAULT_LIMIT[$arg]+x}" ]]; then
                echo "gpu_check.sh: unknown stage '$arg' (stages: ${ALL_STAGES[*]})" >&2; exit 2
            fi
            SELECTED+=("$arg") ;;
    esac
done
[[ ${#SELECTED[@]} -eq 0 ]] && SELECTED=("${ALL_STAGES[@]}")
MODE=gpu
[[ $DRY_RUN -eq 1 ]] && MODE=dry-run

BUDGET="${GPU_CHECK_BUDGET:-470}"
RESERVE="${GPU_CHECK_RESERVE:-10}"
LOG_KEEP="${LOG_KEEP:-204800}"
STAMP="$(date -u +%Y%m%dT%H%M%SZ)"
STARTED="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
RESULTS="${GPU_CHECK_DIR:-${OUT:-benchmarks/results}/gpu-${STAMP}}"
mkdir -p "$RESULTS" || exit 2
RESULTS="$(cd "$RESULTS" && pwd)"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/mgid-gpu-check.XXXXXX")" || exit 2
FILES="$WORK/files"          # what the stages write; packed into files.tar.gz at the end
mkdir -p "$FILES"
: > "$WORK/stages.tsv"
cleanup() { [[ "${GPU_CHECK_KEEP_WORK:-0}" == 1 ]] || rm -rf "$WORK"; }
trap cleanup EXIT
trap 'echo "gpu_check.sh: interrupted" >&2; write_summary --final; exit 130' INT TERM

if [[ -n "${PYTHON:-}" ]]; then
    PY="$PYTHON"
elif [[ -x "$REPO_ROOT/.venv/bin/python" ]]; then
    PY="$REPO_ROOT/.venv/bin/python"
elif command -v python3 >/dev/null 2>&1; then
    PY=python3
else
    PY=python
fi
export PYTHONUNBUFFERED=1 GPU_CHECK_MODE="$MODE"
export PYTHONPATH="$REPO_ROOT${PYTHONPATH:+:$PYTHONPATH}"  # tests and benchmarks import the in-place build
if [[ $DRY_RUN -eq 1 ]]; then
    export CUDA_VISIBLE_DEVICES=""      # CPU only, also on a machine with a GPU
    export MAX_JOBS="${MAX_JOBS:-2}"
    SITE="$WORK/site"                   # throwaway: proves the wheels install, used by nothing
else
    export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
    export MAX_JOBS="${MAX_JOBS:-16}"
    SITE="${GPU_CHECK_SITE:-/tmp/mgid-gpu-check-site}"
fi
WHEELS="${GPU_CHECK_WHEELS:-tools/wheelhouse}"
use_site() {  # the carried wheels' install target on PYTHONPATH, after the in-place build (GPU mode)
    if [[ $DRY_RUN -eq 0 && -d "$SITE" && ":$PYTHONPATH:" != *":$SITE:"* ]]; then
        export PYTHONPATH="$REPO_ROOT:$SITE${PYTHONPATH#"$REPO_ROOT"}"
    fi
}
use_site  # a rerun on a warm machine: the wheels installed by an earlier call
SANITIZER_K="${SANITIZER_K:-read_matches_reference or update_matches_reference or losses_match_reference or bsw_matches_reference or step_matches_reference}"

# ------------------------------------------------------------------------------------------------
# helpers

remaining() { echo $(( BUDGET - RESERVE - SECONDS )); }

meta() { printf '%s=%s\n' "$1" "$(printf '%s' "$2" | tr '\n\t' '  ')" >> "$WORK/meta.txt"; }

write_summary() {  # write_summary [--final]   (tools/gpu_report.py: standard library only)
    "$PY" -m tools.gpu_report summary "$RESULTS" "$WORK" "$@" 2>>"$FILES/summary_errors.log" ||
        python3 -m tools.gpu_report summary "$RESULTS" "$WORK" "$@" 2>>"$FILES/summary_errors.log" ||
        echo "gpu_check.sh: could not write the summary (see summary_errors.log)" >&2
}

selected() { local s; for s in "${SELECTED[@]}"; do [[ "$s" == "$1" ]] && return 0; done; return 1; }

record() {  # record NAME STATUS RC SECONDS LIMIT NOTE COMMAND
    local clean=()
    local f
    for f in "$@"; do clean+=("$(printf '%s' "$f" | tr '\n\t' '  ')"); done
    (IFS=$'\t'; echo "${clean[*]}") >> "$WORK/stages.tsv"
    printf '%-12s %-8s rc=%-4s %4ss  %s\n' "$1" "$2" "${3:--}" "$4" "$6"
    write_summary
}

skip_stage() {  # skip_stage NAME REASON
    echo "--- [$1] skipped: $2" > "$FILES/$1.log"
    record "$1" skipped "" 0 "" "$2" ""
}

truncate_log() {  # keep the first 8 KB and the last LOG_KEEP - 8 KB of a log
    local log="$1" size
    size=$(wc -c < "$log")
    if (( size > LOG_KEEP )); then
        { head -c 8192 "$log"; printf '\n[... %d bytes cut by gpu_check.sh ...]\n' $(( size - LOG_KEEP ));
          tail -c $(( LOG_KEEP - 8192 )) "$log"; } > "$log.cut" && mv "$log.cut" "$log"
    fi
}

pytest_line() {  # the last pytest summary line of a log ("3 passed, 2 skipped in 1.2s")
    grep -E '[0-9]+ (passed|failed|skipped|deselected|errors?|xfailed|xpassed)|no tests ran' "$1" | tail -n 1 |
        sed -E 's/^=+ //; s/ =+$//' || true
}

# run_stage NAME CMD...: runs CMD under timeout with its output in NAME.log, records its status.
# STAGE_NOTE (set by the caller) is prefixed to the note; post_NAME RC LOG may set STATUS and NOTE.
run_stage() {
    local name="$1"; shift
    local var limit left log rc start dur a
    var="$(echo "$name" | tr '[:lower:]' '[:upper:]')_TIMEOUT"
    limit="${!var:-${DEFAULT_LIMIT[$name]}}"
    left="$(remaining)"
    if [[ "$limit" -le 0 || "$limit" -gt "$left" ]]; then limit="$left"; fi
    if [[ "$left" -lt "${MIN_LIMIT:-10}" ]]; then
        skip_stage "$name" "no time left: ${left} s of the ${BUDGET} s budget remain"
        return 0
    fi
    if [[ "${GPU_CHECK_FAIL_STAGE:-}" == "$name" ]]; then
        set -- bash -c 'echo "forced failure: GPU_CHECK_FAIL_STAGE=$1 replaced this stage'"'"'s command"; exit 3' _ "$name"
    fi
    log="$FILES/$name.log"
    {
        echo "=== [$name] $(date -u +%H:%M:%SZ), limit ${limit} s, mode $MODE"
        printf '=== command:'
        for a in "$@"; do
            if [[ ${#a} -gt 160 ]]; then printf ' <program of %d chars>' "${#a}"; else printf ' %q' "$a"; fi
        done
        echo
    } > "$log"
    echo "=== [$name] running (limit ${limit} s)"
    start=$SECONDS
    timeout --kill-after=10 "$limit" "$@" >> "$log" 2>&1 < /dev/null
    rc=$?
    dur=$(( SECONDS - start ))
    echo "=== [$name] exit $rc after ${dur} s" >> "$log"
    STATUS=ok
    NOTE="${STAGE_NOTE:-}"
    [[ $rc -ne 0 ]] && STATUS=FAILED
    if [[ $rc -eq 124 || $rc -eq 137 ]]; then NOTE="${NOTE:+$NOTE; }timed out after ${limit} s"; fi
    if declare -F "post_$name" >/dev/null; then "post_$name" "$rc" "$log"; fi
    truncate_log "$log"
    tail -n 12 "$log" | sed 's/^/    /'
    local cmd="" a
    for a in "$@"; do  # the embedded programs are named, not quoted whole
        if [[ ${#a} -gt 160 ]]; then cmd+="<program of ${#a} chars> "; else cmd+="$(printf '%q' "$a") "; fi
    done
    record "$name" "$STATUS" "$rc" "$dur" "$limit" "$NOTE" "${cmd% }"
    STAGE_NOTE=""
}

append_note() { NOTE="${NOTE:+$NOTE; }$1"; }

post_wheels() {
    local missing
    missing="$(grep -E '^MISSING:' "$2" | sed -E 's/^MISSING: ([^ ]+).*/\1/' | tr '\n' ' ' | sed 's/ $//')"
    if [[ -n "$missing" ]]; then
        MISSING_PKGS="$missing"
        append_note "missing: $missing (carry the wheel folder; see make_wheelhouse.py)"
    else
        append_note "$(grep -E '^wheels:' "$2" | tail -n 1)"
    fi
}

post_build() { append_note "$(grep -E '^(build check|BUILD CHECK)' "$2" | tail -n 1)"; }

post_pytest_common() {  # post_pytest_common RC LOG: the summary line; fails a GPU run that passed nothing
    local line
    line="$(pytest_line "$2")"
    append_note "${line:-no pytest summary line}"
    if [[ "$1" -eq 5 ]]; then append_note "pytest collected no tests"; fi
    if [[ $DRY_RUN -eq 0 && "$1" -eq 0 && ! "$line" =~ [0-9]+\ passed ]]; then
        STATUS=FAILED
        append_note "no test passed (every test skipped?)"
    fi
}
post_tests_cuda() { post_pytest_common "$@"; }
post_suite() {
    post_pytest_common "$@"
    if [[ -n "${MISSING_PKGS:-}" ]]; then append_note "without $MISSING_PKGS: the tests that need it fail or skip"; fi
}
post_sanitizer() {
    [[ "$1" -eq 127 ]] && return 0
    post_pytest_common "$@"
    local s
    s="$(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$2" | tail -n 1)"
    [[ -n "$s" ]] && append_note "$s"
    if grep -q -E 'Device not supported|Target application terminated before first instrumented API call' "$2"; then
        append_note "compute-sanitizer could not instrument the device (gVisor runtime?)"
    fi
    [[ "$1" -eq 99 ]] && append_note "the sanitizer reported errors (exit 99)"
}
post_memcheck() { post_sanitizer "$@"; }
post_racecheck() { post_sanitizer "$@"; }
post_bench_ops() {
    local f="" j
    for j in "$FILES"/bench_ops_*.json; do [[ -f "$j" ]] && f="$j"; done
    append_note "${f:+wrote $(basename "$f")}"
    [[ -z "$f" ]] && append_note "no bench_ops JSON written"
}
post_bench_train() {  # the report under the fixed names the summary reads, and its step time and speed-ups
    local f s=""
    for f in "$FILES"/bench_train_*_*.json "$FILES"/bench_train_*_*.md; do
        [[ -f "$f" ]] && mv "$f" "$FILES/bench_train.${f##*.}"
    done
    [[ -f "$FILES/bench_train.json" ]] && s="$("$PY" -m tools.gpu_report train-note "$FILES/bench_train.json" 2>/dev/null)"
    [[ -z "$s" ]] && s="$(grep -E '^[A-Za-z]*(Error|Exception)|^error:' "$2" | tail -n 1 | cut -c1-200)"
    append_note "${s:-no speed-up computed}"
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

# ------------------------------------------------------------------------------------------------
# environment

if git rev-parse HEAD >/dev/null 2>&1; then
    COMMIT="$(git rev-parse HEAD)"
    [[ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]] && COMMIT="$COMMIT-dirty"
    COMMIT_SOURCE="git"
elif [[ -n "${GPU_CHECK_COMMIT:-}" ]]; then
    COMMIT="$GPU_CHECK_COMMIT"; COMMIT_SOURCE="GPU_CHECK_COMMIT (no .git in this copy)"
elif [[ -s "$WHEELS/COMMIT" ]]; then
    COMMIT="$(head -n 1 "$WHEELS/COMMIT")"
    COMMIT_SOURCE="$WHEELS/COMMIT, written by make_wheelhouse.py (may be older than this tree)"
else
    COMMIT=unknown; COMMIT_SOURCE="no .git, no GPU_CHECK_COMMIT, no $WHEELS/COMMIT"
fi
if [[ -n "${GPU_CHECK_COMMIT:-}" && "$COMMIT_SOURCE" == git && "${COMMIT%-dirty}" != "${GPU_CHECK_COMMIT%-dirty}" ]]; then
    COMMIT_SOURCE="git (GPU_CHECK_COMMIT says $GPU_CHECK_COMMIT)"
fi
SAN="$(find_sanitizer || true)"
NVCC="$( (nvcc --version 2>/dev/null || true) | grep -E -o 'release [0-9.]+, V[0-9.]+' | head -n 1)"
GPU_NAME="" GPU_DRIVER="" GPU_MEMORY="" NVIDIA_SMI="not found"
if command -v nvidia-smi >/dev/null 2>&1; then
    NVIDIA_SMI="$(command -v nvidia-smi)"
    q="$(timeout 20 nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | head -n 1)"
    if [[ "$q" == *,*,* ]]; then
        IFS=',' read -r GPU_NAME GPU_DRIVER GPU_MEMORY <<< "$q"
        GPU_DRIVER="${GPU_DRIVER# }"; GPU_MEMORY="${GPU_MEMORY# }"
    else
        NVIDIA_SMI="$NVIDIA_SMI (failed: $q)"
    fi
    { timeout 20 nvidia-smi; timeout 20 nvidia-smi -q; } > "$FILES/nvidia-smi.txt" 2>&1
else
    echo "nvidia-smi not found on PATH" > "$FILES/nvidia-smi.txt"
fi
[[ $DRY_RUN -eq 1 && -n "$GPU_NAME" ]] && GPU_NAME="$GPU_NAME (hidden: dry run)"
timeout 60 "$PY" -m tools.gpu_report env > "$WORK/env.json" 2> "$FILES/env_errors.log" || echo '{}' > "$WORK/env.json"
cp "$WORK/env.json" "$FILES/env.json"

: > "$WORK/meta.txt"
meta MODE "$MODE"; meta STARTED "$STARTED"; meta T0 "$(( $(date +%s) - SECONDS ))"; meta BUDGET "$BUDGET"
meta STAGES "${ALL_STAGES[*]}"; meta COMMIT "$COMMIT"; meta COMMIT_SOURCE "$COMMIT_SOURCE"
meta GPU_NAME "$GPU_NAME"; meta GPU_DRIVER "$GPU_DRIVER"; meta GPU_MEMORY "$GPU_MEMORY"; meta NVIDIA_SMI "$NVIDIA_SMI"
meta NVCC "${NVCC:-not found}"; meta SANITIZER "${SAN:-not found}"; meta HOST "$(hostname 2>/dev/null)"
meta NPROC "$(env -u OMP_NUM_THREADS nproc 2>/dev/null)"
for k in PYTHON TORCH_CUDA_ARCH_LIST MAX_JOBS BUILD_MODE BENCH_OPS_ARGS TRAIN_ARGS SANITIZER_K SUITE_WORKERS \
         SUITE_ARGS GPU_CHECK_FAIL_STAGE CUDA_HOME; do
    [[ -n "${!k+x}" ]] && meta "KNOB_$k" "${!k}"
done
meta KNOB_SANITIZER_K "$SANITIZER_K"
{
    echo "mode: $MODE   started: $STARTED   results: $RESULTS"
    echo "commit: $COMMIT ($COMMIT_SOURCE)"
    echo "python: $PY ($("$PY" --version 2>&1))"
    echo "env: $(cat "$WORK/env.json")"
    echo "GPU: ${GPU_NAME:-none} ${GPU_DRIVER:+driver $GPU_DRIVER} ${GPU_MEMORY}"
    echo "nvcc: $(command -v nvcc || echo 'not on PATH') ${NVCC}   CUDA_HOME: ${CUDA_HOME:-unset}"
    echo "ninja: $(command -v ninja || echo 'not on PATH')   compute-sanitizer: ${SAN:-not found}"
    echo "TORCH_CUDA_ARCH_LIST: ${TORCH_CUDA_ARCH_LIST:-unset}   MAX_JOBS: $MAX_JOBS   nproc: $(env -u OMP_NUM_THREADS nproc)"
    echo "budget: $BUDGET s (reserve $RESERVE s)   stages: ${SELECTED[*]}"
} > "$FILES/env.txt" 2>&1
cat "$FILES/env.txt"
write_summary

# ------------------------------------------------------------------------------------------------
# stages

for STAGE in "${ALL_STAGES[@]}"; do
    STAGE_NOTE=""
    if ! selected "$STAGE"; then
        skip_stage "$STAGE" "not selected (stages asked for: ${SELECTED[*]})"
        continue
    fi
    case "$STAGE" in
    wheels)
        always=()
        [[ $DRY_RUN -eq 1 ]] && { always=(--always); STAGE_NOTE="dry run: into a throwaway folder"; }
        run_stage wheels "$PY" -m tools.make_wheelhouse install --wheels "$WHEELS" --target "$SITE" "${always[@]}"
        use_site
        ;;
    build)
        if [[ "${BUILD_MODE:-setup}" == pip ]]; then
            build_cmd=("$PY" -m pip install --no-build-isolation --no-deps --no-index -v -e .)
        else
            build_cmd=("$PY" setup.py build_ext --inplace)
        fi
        suffix="$("$PY" -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))' 2>/dev/null)"
        ext="mgid/_C${suffix:-.so}"
        if [[ $DRY_RUN -eq 1 && -f "$ext" ]]; then
            STAGE_NOTE="dry run: not rebuilt, $ext exists"
            if [[ -n "$(find csrc setup.py -newer "$ext" -type f 2>/dev/null | head -n 1)" ]]; then
                STAGE_NOTE="$STAGE_NOTE (older than csrc/ or setup.py)"
            fi
            run_stage build bash -c 'py="$1" ext="$2" info="$3"; shift 3
                echo "dry run: the extension $ext exists: NOT rebuilt"
                echo "would run: TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16 MGID_FORCE_CUDA=1 $*"
                [[ -f setup.py ]] || { echo "setup.py not found"; exit 1; }
                for t in ninja nvcc "$py"; do echo "$t: $(command -v "$t" || echo not found)"; done
                "$py" -m tools.gpu_report build-check "$info"' _ "$PY" "$ext" "$FILES/build_info.json" "${build_cmd[@]}"
        else
            [[ $DRY_RUN -eq 1 ]] && STAGE_NOTE="dry run: no $ext, so built here"
            force=()
            [[ $DRY_RUN -eq 0 ]] && force=(env MGID_FORCE_CUDA=1)
            run_stage build bash -c 'py="$1" info="$2"; shift 2; "$@" && "$py" -m tools.gpu_report build-check "$info"' \
                _ "$PY" "$FILES/build_info.json" "${force[@]}" "${build_cmd[@]}"
        fi
        ;;
    tests_cuda)
        [[ $DRY_RUN -eq 1 ]] && STAGE_NOTE="dry run: GPU hidden, the CUDA tests skip"
        run_stage tests_cuda "$PY" -m pytest -m cuda -q -rs -p no:cacheprovider --junitxml="$FILES/tests_cuda.xml"
        ;;
    bench_ops)
        if [[ $DRY_RUN -eq 1 ]]; then
            STAGE_NOTE="dry run: --quick on the CPU"
            args=(--quick --device cpu --shapes train --threads 1 --impls "fused,reference" --bsw-shapes none
                  --repeats 2 --warmup 0 --max-seconds 0.05)
        else
            args=(--device cuda --shapes "train,infer1k,mnad_large" --compile none --repeats 20 --max-seconds 0.25)
        fi
        # shellcheck disable=SC2086  # BENCH_OPS_ARGS is a list of words on purpose
        run_stage bench_ops "$PY" -m benchmarks.bench_ops "${args[@]}" --out "$FILES" ${BENCH_OPS_ARGS:-}
        ;;
    bench_train)
        if [[ $DRY_RUN -eq 1 ]]; then
            STAGE_NOTE="dry run: CPU, batch 1, crop 32, 1 step"
            args=(--device cpu --config cpu --batch 1 --crop 32 --warmup 0 --steps 1 --threads 1
                  --cases baseline,bf16,reference_ops)
        else
            args=(--device cuda --config paper --warmup 3 --steps 10 --threads 8
                  --cases baseline,bf16,reference_ops,reference_bf16)
        fi
        # shellcheck disable=SC2086  # TRAIN_ARGS is a list of words on purpose; its options come last and win
        run_stage bench_train "$PY" -m benchmarks.bench_train "${args[@]}" --workers 0 --data-batches 2 \
            --curve-steps 0 --no-compile --out "$FILES" ${TRAIN_ARGS:-}
        ;;
    memcheck|racecheck)
        if [[ $DRY_RUN -eq 1 ]]; then
            skip_stage "$STAGE" "dry run: no GPU used (compute-sanitizer: ${SAN:-not found})"
            continue
        fi
        if [[ -z "$SAN" ]]; then
            STAGE_NOTE="compute-sanitizer not found (PATH, /usr/local/cuda*)"
            run_stage "$STAGE" bash -c 'echo "compute-sanitizer not found on PATH or under /usr/local/cuda*"; exit 127'
            continue
        fi
        extra=()
        # memcheck: without the caching allocator every tensor is its own allocation, so an out-of-bounds
        # access that would land in another cached block is reported.
        [[ "$STAGE" == memcheck ]] && extra=(env PYTORCH_NO_CUDA_MEMORY_CACHING=1)
        run_stage "$STAGE" "${extra[@]}" "$SAN" --tool "$STAGE" --error-exitcode 99 --print-limit 100 \
            "$PY" -m pytest -m cuda tests/ops/test_ops_fused.py tests/ops/test_memory_step.py -k "$SANITIZER_K" -q -x -p no:cacheprovider
        ;;
    suite)
        if [[ $DRY_RUN -eq 1 ]]; then
            skip_stage suite "dry run: the whole suite runs on its own (pytest -q)"
            continue
        fi
        left="$(remaining)"
        if [[ "$left" -lt "${SUITE_MIN_S:-40}" ]]; then
            skip_stage suite "only ${left} s of the ${BUDGET} s budget left (SUITE_MIN_S ${SUITE_MIN_S:-40}): run \`pytest -q\` in another call"
            continue
        fi
        xdist=()
        workers="${SUITE_WORKERS:-8}"
        if [[ "$workers" -gt 1 ]] && "$PY" -c 'import xdist' >/dev/null 2>&1; then
            xdist=(-n "$workers")
        fi
        STAGE_NOTE="${xdist[*]:+pytest-xdist ${xdist[*]}; }without tests/benchmarks/test_gpu_check.py"
        # shellcheck disable=SC2086
        run_stage suite "$PY" -m pytest -q -rfEs -p no:cacheprovider --ignore=tests/benchmarks/test_gpu_check.py "${xdist[@]}" \
            --junitxml="$FILES/suite.xml" ${SUITE_ARGS:-}
        ;;
    esac
done

# ------------------------------------------------------------------------------------------------
# summary

write_summary --final
FAILED="$(awk -F'\t' '$2 == "FAILED" {print $1}' "$WORK/stages.tsv" | tr '\n' ' ')"
echo "=== gpu_check ($MODE) done in ${SECONDS} s: $RESULTS"
ls -la "$RESULTS"
awk -F'\t' '{printf "%-12s %-8s rc=%-4s %4ss  %s\n", $1, $2, ($3 == "" ? "-" : $3), $4, $6}' "$WORK/stages.tsv"
if [[ -n "$FAILED" ]]; then
    echo "FAILED stages: $FAILED"
    exit 1
fi
echo "no stage failed"
exit 0
