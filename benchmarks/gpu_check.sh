#!/usr/bin/env bash
# GPU check of mgid on the lent GPU machine (one NVIDIA H200, sm_90; python3 3.12 with torch 2.11+cu130,
# nvcc 13, ninja, pytest, compute-sanitizer; no package index, no network), as ONE command that ends
# within 8 minutes (default budget 470 s, summary included), so that it works the first time.
#
# ONE CALL on the lent machine (the device tool), from a checkout here that has the wheel folder:
#     1. here, once (needs pip's index; the folder is git-ignored, ~0.25 MiB):
#            .venv/bin/python benchmarks/make_wheelhouse.py      # prints the call below, commit filled in
#     2. the device tool:
#            run(command='GPU_CHECK_COMMIT=<git rev-parse HEAD here> bash benchmarks/gpu_check.sh',
#                carry=['benchmarks/wheelhouse'], timeout_s=570)
#        The results come back as $OUT/gpu-<UTC stamp>/ with 4 files (the tool returns at most 8 files,
#        two folders deep). Then give_back, unless a rerun follows at once. A rerun of some stages on the
#        still-warm machine (the in-place build and the wheels in /tmp stay), e.g. a sanitizer that ran out of
#        time: `MEMCHECK_TIMEOUT=200 RACECHECK_TIMEOUT=200 bash benchmarks/gpu_check.sh memcheck racecheck`.
#     Limits sum to 440 s before the suite; the suite gets what is left of the 470 s (typically 2-4 minutes).
#     Here, without a GPU:  bash benchmarks/gpu_check.sh --dry-run   (tests/benchmarks/test_gpu_check.py runs it)
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
#   bench_ops   (60)  benchmarks/bench_ops.py --device cuda --shapes "train,infer1k,mnad_large" --compile none
#                     --repeats 20 --max-seconds 0.25 (BENCH_OPS_ARGS are appended and win, e.g. "--compile train").
#   bench_train (40)  training throughput on the GPU: MGIDObjective + optimizer_step of the `paper` config (B 8, 256x256),
#                     fused vs reference ops x fp32 vs bf16 autocast, 3 warm-up + 10 timed steps each; the program
#                     is below (TRAIN_BENCH_PY; benchmarks/bench_train.py times the CPU only). TRAIN_ARGS appended.
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
# Stages write into a work folder under $TMPDIR (/tmp) first; the summary files are rewritten after every
# stage, so a run cut short still leaves them.
#
# Knobs (environment):
#   PYTHON            interpreter (default: .venv/bin/python if present, else python3, else python)
#   GPU_CHECK_COMMIT  commit to report where the copy has no .git (else the wheel folder's COMMIT file)
#   GPU_CHECK_WHEELS  wheel folder (benchmarks/wheelhouse); GPU_CHECK_SITE install target (/tmp/mgid-gpu-check-site)
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
WHEELS="${GPU_CHECK_WHEELS:-benchmarks/wheelhouse}"
use_site() {  # the carried wheels' install target on PYTHONPATH, after the in-place build (GPU mode)
    if [[ $DRY_RUN -eq 0 && -d "$SITE" && ":$PYTHONPATH:" != *":$SITE:"* ]]; then
        export PYTHONPATH="$REPO_ROOT:$SITE${PYTHONPATH#"$REPO_ROOT"}"
    fi
}
use_site  # a rerun on a warm machine: the wheels installed by an earlier call
SANITIZER_K="${SANITIZER_K:-read_matches_reference or update_matches_reference or losses_match_reference or bsw_matches_reference or step_matches_reference}"

# ------------------------------------------------------------------------------------------------
# embedded programs

# Training throughput of one training step (MGIDObjective + optimizer_step, what mgid train runs) on one device: each case is (ops mode, precision).
TRAIN_BENCH_PY=$(cat <<'PYEOF'
import argparse, datetime, json, math, statistics, sys, time, traceback
from pathlib import Path
import torch
import mgid.ops as ops
from mgid.config.train_config import named_config
from mgid.losses import MGIDLoss
from mgid.models import MGIDNet
from mgid.train.objective import MGIDObjective, optimizer_step
from mgid.train.sampler import seed_everything

p = argparse.ArgumentParser(prog="gpu_check.sh bench_train")
p.add_argument("--device", default="cuda")
p.add_argument("--config", default="paper")
p.add_argument("--batch", type=int, default=0, help="default: the config's batch_size")
p.add_argument("--crop", type=int, default=0, help="default: the config's crop_size")
p.add_argument("--warmup", type=int, default=3)
p.add_argument("--steps", type=int, default=10)
p.add_argument("--threads", type=int, default=0)
p.add_argument("--channels-last", action="store_true")
p.add_argument("--cases", default="fused:fp32,fused:bf16,reference:fp32,reference:bf16")
p.add_argument("--seed", type=int, default=0)
p.add_argument("--out", required=True)
a = p.parse_args(sys.argv[1:])
dev = torch.device(a.device)
if a.threads:
    torch.set_num_threads(a.threads)
cfg = named_config(a.config)
B, S = a.batch or cfg.batch_size, a.crop or cfg.crop_size
g = torch.Generator().manual_seed(a.seed)
batches = []
for _ in range(2):  # random pairs: frame 2 = frame 1 + noise (timing does not depend on the content)
    f1 = torch.rand(B, 3, S, S, generator=g) * 2 - 1
    f2 = (f1 + 0.1 * torch.randn(B, 3, S, S, generator=g)).clamp(-1, 1)
    batches.append((f1.to(dev), f2.to(dev)))
fmt = torch.channels_last if a.channels_last else torch.contiguous_format

def sync():
    if dev.type == "cuda":
        torch.cuda.synchronize()

rows = []
for spec in [s.strip() for s in a.cases.split(",") if s.strip()]:
    mode, prec = spec.split(":")
    row = {"case": spec, "ops": mode, "precision": prec, "status": "ok", "error": None}
    try:
        ops.set_ops_mode(mode)
        row["op_path"] = ops.op_path(dev)
        seed_everything(a.seed)
        net = MGIDNet(cfg.model, generator=torch.Generator().manual_seed(a.seed)).to(dev, memory_format=fmt).train()
        o = cfg.optim
        opt = torch.optim.Adam(net.parameters(), lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay)
        objective = MGIDObjective(net, MGIDLoss(cfg.loss), prec)
        times = []
        for i in range(a.warmup + a.steps):
            f1, f2 = batches[i % 2]
            sync()
            t0 = time.perf_counter()
            total, _terms, _out = objective(f1.contiguous(memory_format=fmt), f2.contiguous(memory_format=fmt))
            value = float(total.detach())
            if not math.isfinite(value):
                raise FloatingPointError(f"non-finite loss {value} at step {i + 1}")
            optimizer_step(opt, total)
            sync()
            times.append(time.perf_counter() - t0)
        timed = times[a.warmup:] or times[-1:]
        med = statistics.median(timed)
        row.update(median_s=med, min_s=min(timed), max_s=max(timed), steps=len(timed), warmup=a.warmup,
                   first_step_s=times[0], images_per_s=2 * B / med, final_loss=value)
    except Exception as err:  # a failed case is a row, the others still run
        row.update(status="failed", error=f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}",
                   traceback="".join(traceback.format_exception(type(err), err, err.__traceback__))[-3000:])
    finally:
        ops.set_ops_mode(None)
    rows.append(row)
    print(f"{spec}: " + (f"{row['median_s'] * 1e3:.2f} ms/step, {row['images_per_s']:.1f} images/s ({row['op_path']})"
                         if row["status"] == "ok" else f"FAILED {row['error']}"), flush=True)
    if dev.type == "cuda":
        torch.cuda.empty_cache()

by = {r["case"]: r for r in rows if r["status"] == "ok"}
speedups = {}
for prec in ("fp32", "bf16"):
    f, r = by.get(f"fused:{prec}"), by.get(f"reference:{prec}")
    if f and r:
        speedups[f"fused vs reference, {prec}"] = r["median_s"] / f["median_s"]
for mode in ("fused", "reference"):
    x, y = by.get(f"{mode}:fp32"), by.get(f"{mode}:bf16")
    if x and y:
        speedups[f"bf16 vs fp32, {mode} ops"] = x["median_s"] / y["median_s"]
device_name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
result = {"benchmark": "gpu_check bench_train (MGIDObjective + optimizer_step)", "device": a.device,
          "device_name": device_name, "torch": torch.__version__, "cuda": torch.version.cuda,
          "build_info": ops.build_info(), "config": a.config, "batch": B, "crop": S, "warmup": a.warmup,
          "steps": a.steps, "channels_last": a.channels_last, "threads": torch.get_num_threads(),
          "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
          "cases": rows, "speedups": speedups}
md = [f"### Training step throughput, {device_name} ({a.config} config: batch {B}, crop {S}, "
      f"{a.warmup} warm-up + {a.steps} timed steps, median)", "",
      "| case | ops path | ms/step | images/s | first step s | status |", "| --- | --- | ---: | ---: | ---: | --- |"]
for r in rows:
    if r["status"] == "ok":
        md.append(f"| {r['case']} | {r['op_path']} | {r['median_s'] * 1e3:.2f} | {r['images_per_s']:.1f} | "
                  f"{r['first_step_s']:.2f} | ok |")
    else:
        md.append(f"| {r['case']} | {r.get('op_path', '-')} | - | - | - | FAILED: {r['error']} |")
md += [""] + [f"- {k}: {v:.2f}x" for k, v in speedups.items()]
out = Path(a.out)
(out / "bench_train.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
(out / "bench_train.md").write_text("\n".join(md) + "\n")
print("\n".join(md))
sys.exit(0 if all(r["status"] == "ok" for r in rows) else 1)
PYEOF
)

# After the build: the extension loads (and, on the GPU, has CUDA kernels for the arch asked for).
BUILD_CHECK_PY=$(cat <<'PYEOF'
import json, os, sys
import torch
import mgid.ops as o
gpu = os.environ.get("GPU_CHECK_MODE") == "gpu"
info = dict(o.build_info())
info["op_path_cpu"] = o.op_path("cpu")
if torch.cuda.is_available():
    info["op_path_cuda"] = o.op_path("cuda")
print("build_info:", json.dumps(info))
with open(sys.argv[1], "w") as f:
    json.dump(info, f, indent=1)
problems = []
if not info.get("extension"):
    problems.append("mgid._C did not load")
if gpu:
    if not info.get("cuda"):
        problems.append("the extension was built without CUDA kernels")
    elif not (torch.cuda.is_available() and o.fused_available("cuda")):
        problems.append("fused_available('cuda') is False (or torch sees no GPU)")
    want = os.environ.get("TORCH_CUDA_ARCH_LIST", "").replace(" ", "")
    if want and want not in str(info.get("cuda_arch_list", "")).replace(" ", ""):
        problems.append(f"built for {info.get('cuda_arch_list')!r}, asked for {want!r}")
    if info.get("torch") and info.get("runtime_torch") and info["torch"] != info["runtime_torch"]:
        problems.append(f"built against torch {info['torch']}, runs {info['runtime_torch']}")
if problems:
    print("BUILD CHECK FAILED: " + "; ".join(problems))
    sys.exit(1)
print("build check ok")
PYEOF
)

# The environment, as JSON (python, torch, CUDA as torch sees it).
ENV_PY=$(cat <<'PYEOF'
import json, platform, sys
info = {"python": platform.python_version(), "python_executable": sys.executable, "platform": platform.platform()}
try:
    import torch
    info.update(torch=torch.__version__, torch_cuda=torch.version.cuda, cuda_available=torch.cuda.is_available(),
                cudnn=torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None)
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(gpu=p.name, capability=f"sm_{p.major}{p.minor}", gpu_memory_gib=round(p.total_memory / 2**30, 1),
                    multiprocessors=p.multi_processor_count)
except Exception as err:  # torch missing or broken: the stages will say so
    info["torch_error"] = f"{type(err).__name__}: {err}"
print(json.dumps(info))
PYEOF
)

# summary.json, summary.md and logs.txt from the stage table; with --final also files.tar.gz.
SUMMARY_PY=$(cat <<'PYEOF'
import glob, json, os, sys, tarfile, time
from pathlib import Path
results, work, final = Path(sys.argv[1]), Path(sys.argv[2]), "--final" in sys.argv[3:]
files = work / "files"
meta = {}
for line in (work / "meta.txt").read_text().splitlines():
    if "=" in line:
        k, v = line.split("=", 1)
        meta[k] = v
def load(path):
    try:
        return json.loads(Path(path).read_text())
    except Exception:
        return None
env = load(work / "env.json") or {}
order = meta.get("STAGES", "").split()
rows = {}
for line in (work / "stages.tsv").read_text().splitlines():
    f = line.split("\t")
    if len(f) >= 7:
        rows[f[0]] = {"name": f[0], "status": f[1], "exit_code": None if f[2] == "" else int(f[2]),
                      "seconds": int(f[3]), "limit_s": None if f[4] == "" else int(f[4]), "note": f[5], "command": f[6]}
stages = [rows.get(n, {"name": n, "status": "pending" if not final else "not run", "exit_code": None,
                       "seconds": 0, "limit_s": None, "note": "", "command": ""}) for n in order]
failed = [s["name"] for s in stages if s["status"] == "FAILED"]
elapsed = int(time.time()) - int(meta.get("T0", "0"))

bench_ops_json = sorted(glob.glob(str(files / "bench_ops_*.json")))
bench_ops = load(bench_ops_json[-1]) if bench_ops_json else None
bench_ops_md = Path(bench_ops_json[-1]).with_suffix(".md") if bench_ops_json else None
bench_train = load(files / "bench_train.json")
results_part = {}
if bench_ops:
    results_part["bench_ops"] = {
        "file": "files/" + Path(bench_ops_json[-1]).name, "device": bench_ops.get("device"),
        "cuda_measured": bench_ops.get("cuda_measured"), "errors": bench_ops.get("errors"),
        "targets": bench_ops.get("targets")}
if bench_train:
    results_part["bench_train"] = {"file": "files/bench_train.json", "device_name": bench_train.get("device_name"),
                                   "batch": bench_train.get("batch"), "crop": bench_train.get("crop"),
                                   "speedups": bench_train.get("speedups"),
                                   "cases": [{k: c.get(k) for k in ("case", "op_path", "status", "median_s",
                                                                   "images_per_s", "error")}
                                             for c in bench_train.get("cases", [])]}
summary = {
    "schema": 1, "tool": "benchmarks/gpu_check.sh", "mode": meta.get("MODE"), "final": final,
    "started_utc": meta.get("STARTED"), "written_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    "elapsed_s": elapsed, "budget_s": int(meta.get("BUDGET", "0")),
    "commit": meta.get("COMMIT"), "commit_source": meta.get("COMMIT_SOURCE"),
    "device": {"name": meta.get("GPU_NAME") or env.get("gpu") or "none", "driver": meta.get("GPU_DRIVER"),
               "memory": meta.get("GPU_MEMORY"), "capability": env.get("capability"),
               "nvidia_smi": meta.get("NVIDIA_SMI")},
    "python": env.get("python"), "python_executable": env.get("python_executable"),
    "torch": env.get("torch"), "cuda": {"torch": env.get("torch_cuda"), "nvcc": meta.get("NVCC"),
                                       "available_to_torch": env.get("cuda_available")},
    "compute_sanitizer": meta.get("SANITIZER"), "host": meta.get("HOST"), "nproc": meta.get("NPROC"),
    "environment": env, "build_info": load(files / "build_info.json"),
    "knobs": {k[5:]: v for k, v in meta.items() if k.startswith("KNOB_")},
    "stages": stages, "failed": failed, "ok": final and not failed,
    "results": results_part, "files": ["summary.json", "summary.md", "logs.txt", "files.tar.gz"],
}
(results / "summary.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")

dev = summary["device"]
md = [f"# mgid GPU check ({summary['mode']}), {summary['written_utc']}", "",
      f"- commit: `{summary['commit']}` ({summary['commit_source']})",
      f"- device: {dev['name']}" + (f", driver {dev['driver']}, {dev['memory']}" if dev.get("driver") else "")
      + (f", {dev['capability']}" if dev.get("capability") else ""),
      f"- torch {summary['torch']}, CUDA {summary['cuda']['torch']} (torch), nvcc {summary['cuda']['nvcc']}; "
      f"python {summary['python']}",
      f"- build_info: `{json.dumps(summary['build_info'])}`",
      f"- time: {elapsed} s of a {summary['budget_s']} s budget"
      + ("" if final else " (run still going: this summary is rewritten after each stage)"),
      "- overall: " + ("**FAILED: " + ", ".join(failed) + "**" if failed else
                       ("every stage that ran passed" if final else "no failure so far")), "",
      "| # | stage | status | exit | seconds | limit s | note |", "| ---: | --- | --- | ---: | ---: | ---: | --- |"]
for i, s in enumerate(stages, 1):
    note = s["note"].replace("|", "/")
    md.append(f"| {i} | {s['name']} | {s['status']} | {'' if s['exit_code'] is None else s['exit_code']} | "
              f"{s['seconds']} | {s['limit_s'] or ''} | {note} |")
if bench_ops_md and bench_ops_md.exists():
    md += ["", "## bench_ops", "", bench_ops_md.read_text()[:60000]]
if (files / "bench_train.md").exists():
    md += ["", "## bench_train", "", (files / "bench_train.md").read_text()]
for s in stages:
    log = files / f"{s['name']}.log"
    if s["status"] == "FAILED" and log.exists():
        tail = log.read_text(errors="replace").splitlines()[-40:]
        md += ["", f"## {s['name']}: last lines of its log", "", "```", *tail, "```"]
(results / "summary.md").write_text("\n".join(md) + "\n")

with open(results / "logs.txt", "w") as out:
    for name in ("env.txt", "nvidia-smi.txt"):
        if (files / name).exists():
            out.write(f"===== {name} =====\n" + (files / name).read_text(errors="replace")[:20000] + "\n")
    for s in stages:
        log = files / f"{s['name']}.log"
        out.write(f"===== stage {s['name']}: {s['status']}, exit {s['exit_code']}, {s['seconds']} s =====\n")
        out.write(log.read_text(errors="replace") if log.exists() else "(no log)\n")
        out.write("\n")
if final:
    with tarfile.open(results / "files.tar.gz", "w:gz") as tar:
        for f in sorted(files.iterdir()):
            if f.is_file() and f.stat().st_size > 0:
                tar.add(str(f), arcname=f"files/{f.name}")
PYEOF
)

# ------------------------------------------------------------------------------------------------
# helpers

remaining() { echo $(( BUDGET - RESERVE - SECONDS )); }

meta() { printf '%s=%s\n' "$1" "$(printf '%s' "$2" | tr '\n\t' '  ')" >> "$WORK/meta.txt"; }

write_summary() {  # write_summary [--final]
    "$PY" -c "$SUMMARY_PY" "$RESULTS" "$WORK" "$@" 2>>"$FILES/summary_errors.log" ||
        python3 -c "$SUMMARY_PY" "$RESULTS" "$WORK" "$@" 2>>"$FILES/summary_errors.log" ||
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
post_bench_train() {
    local s
    s="$(grep -E '^- fused vs reference|FAILED' "$2" | head -n 2 | sed 's/^- //' | tr '\n' ';' | sed 's/;$//; s/;/; /g')"
    [[ -z "$s" ]] && s="$(grep -E '^[A-Za-z]*(Error|Exception)' "$2" | tail -n 1 | cut -c1-200)"
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
timeout 60 "$PY" -c "$ENV_PY" > "$WORK/env.json" 2> "$FILES/env_errors.log" || echo '{}' > "$WORK/env.json"
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
        run_stage wheels "$PY" benchmarks/make_wheelhouse.py install --wheels "$WHEELS" --target "$SITE" "${always[@]}"
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
            run_stage build bash -c 'py="$1" ext="$2" check="$3" info="$4"; shift 4
                echo "dry run: the extension $ext exists: NOT rebuilt"
                echo "would run: TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16 MGID_FORCE_CUDA=1 $*"
                [[ -f setup.py ]] || { echo "setup.py not found"; exit 1; }
                for t in ninja nvcc "$py"; do echo "$t: $(command -v "$t" || echo not found)"; done
                "$py" -c "$check" "$info"' _ "$PY" "$ext" "$BUILD_CHECK_PY" "$FILES/build_info.json" "${build_cmd[@]}"
        else
            [[ $DRY_RUN -eq 1 ]] && STAGE_NOTE="dry run: no $ext, so built here"
            force=()
            [[ $DRY_RUN -eq 0 ]] && force=(env MGID_FORCE_CUDA=1)
            run_stage build bash -c 'py="$1" check="$2" info="$3"; shift 3; "$@" && "$py" -c "$check" "$info"' \
                _ "$PY" "$BUILD_CHECK_PY" "$FILES/build_info.json" "${force[@]}" "${build_cmd[@]}"
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
        run_stage bench_ops "$PY" benchmarks/bench_ops.py "${args[@]}" --out "$FILES" ${BENCH_OPS_ARGS:-}
        ;;
    bench_train)
        if [[ $DRY_RUN -eq 1 ]]; then
            STAGE_NOTE="dry run: CPU, batch 1, crop 32, 1 step"
            args=(--device cpu --config cpu --batch 1 --crop 32 --warmup 0 --steps 1 --threads 1)
        else
            args=(--device cuda --config paper --warmup 3 --steps 10)
        fi
        # shellcheck disable=SC2086
        run_stage bench_train "$PY" -c "$TRAIN_BENCH_PY" "${args[@]}" --out "$FILES" ${TRAIN_ARGS:-}
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
