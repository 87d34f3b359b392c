"""The markdown report of the training benchmark (`markdown_report`), from its JSON result."""
from __future__ import annotations

import math
from typing import Any

from benchmarks.harness import BUSY_SHARE

#: Characters of an error message kept in the table (the JSON keeps the full message).
ERROR_CHARS = 160


def _f(value: Any, spec: str = ".3f", none: str = "-") -> str:
    return none if value is None or (isinstance(value, float) and not math.isfinite(value)) else format(value, spec)


def markdown_report(result: dict[str, Any]) -> str:
    """The report: environment, the step table, the data-loading table, the loss-curve check."""
    env, s = result["environment"], result["settings"]
    cpu, gpu = env["cpu"], env.get("gpu")
    where = f"{gpu['name']} (CUDA)" if result["device"] == "cuda" and gpu else "the CPU"
    lines = [
        f"# MGID training throughput on {where} ({env['date_utc']})",
        "",
        *([f"- GPU: {gpu['name']}, {gpu['capability']}, {gpu['memory_gib']} GiB; torch's CUDA {gpu['torch_cuda']}"]
          if gpu else []),
        f"- CPU: {cpu['line']}",
        f"- torch {env['torch']}, Python {env['python']}, git {env['git']['commit']}"
        + (" (uncommitted changes)" if env["git"]["dirty"] else "")
        + f", mgid ops build: {env['build_info']}",
        f"- model/loss of config `{s['config']}`; batch {s['batch']} pairs of {s['crop']}x{s['crop']} "
        f"(= {2 * s['batch']} images per step); {s['warmup']} warm-up + {s['steps']} timed steps per case; "
        f"threads {s['threads']}; seed {s['seed']}" + (" (--quick)" if s["quick"] else ""),
        f"- load average {env['loadavg_start']} at the start, {result['loadavg_end']} at the end; other "
        f"processes used {_f(result['other_load_share'], '.0%')} of the machine's CPU time during the run",
        "",
    ]
    if result["busy_machine"]:
        lines += [f"**Warning: the machine was busy** (other processes used more than {BUSY_SHARE:.0%} of its CPU "
                  "time): the absolute numbers are low and the ratios are noisy. Rerun on an idle machine.", ""]
    base = next((r for r in result["cases"] if r["id"] == "baseline" and r["status"] == "ok"), None)
    lines += [
        "## Training step",
        "",
        "| case | precision | memory format | exec | ops | threads | s/step (median) | IQR | images/s | vs baseline "
        "| first step s (compile s) | img/s incl. loading, 0 workers | workers to keep up | other load |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["cases"]:
        head = (f"| {r['label']} | {r['precision']} | {'channels_last' if r['channels_last'] else 'contiguous'} | "
                f"{'compiled' if r['compile'] else 'eager'} | {r['ops']} | {r['threads']} |")
        if r["status"] != "ok":
            msg = (r.get("error") or "").replace("|", "\\|")[:ERROR_CHARS]
            lines.append(f"{head} **{r['status']}**: {msg} | | | | | | | | |")
            continue
        iqr = (f"{r['p25_s']:.3f}-{r['p75_s']:.3f}" if r.get("p25_s") is not None else "-")
        speed = f"{base['median_s'] / r['median_s']:.2f}x" if base else "-"
        first = _f(r["first_step_s"]) + (f" ({r['compile_s']:.1f})" if r.get("compile_s") is not None else "")
        keep = r.get("workers_to_keep_up")
        keep_s = "-" if "workers_to_keep_up" not in r else (f"{keep}" if keep is not None else "**none measured**")
        lines.append(f"{head} {r['median_s']:.3f} | {iqr} | {r['images_per_s']:.1f} | {speed} | {first} | "
                     f"{_f(r.get('images_per_s_with_serial_loading'), '.1f')} | {keep_s} | "
                     f"{_f(r.get('other_load_share'), '.0%')} |")
    lines += [
        "",
        "images/s = 2 x batch / median seconds per step (two frames per pair). A step: inputs to the memory "
        "format, `MGIDObjective` (both frames, the loss), the finiteness check, backward and Adam; batches are "
        "rendered before timing. \"auto\" = what training resolves on this CPU (`mgid.precision`): "
        f"{result['auto']['resolved']}. "
        "Compile s = first step minus a steady one (inductor's on-disk caches can shorten it on later cases "
        "and runs). \"img/s incl. loading, 0 workers\": loading in the main process between steps; "
        "\"workers to keep up\": the fewest DataLoader workers whose pairs/s (below, measured alone) is at "
        "least the pairs/s the step consumes.",
        "",
    ]
    verdict = result["auto"]["rows"]
    if verdict:
        lines += ["## Is auto the fastest?", "",
                  "`auto` (eager, fused ops) against the fastest eager combination measured at the same thread count "
                  "(fp32 / bf16, contiguous / channels_last, fused / reference ops), and compiled:", "",
                  "| threads | auto s/step | fastest eager | its s/step | auto / fastest | auto compiled s/step |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {v['threads']} | {v['auto_s']:.3f} | {v['fastest_eager']} | {v['fastest_eager_s']:.3f} | "
                  f"{v['auto_within']:.2f} | {_f(v['compiled_s'], '.3f')} |" for v in verdict]
        lines.append("")
    shares = [r for r in result["cases"] if r.get("op_share")]
    if shares:
        lines += [
            "## Share of the step in the mgid ops (fused, eager)",
            "",
            "One extra step per case under `torch.profiler`: the outermost `mgid::` operator calls, forward and "
            "backward, as a share of that step's wall time (profiler overhead included in the wall time).",
            "",
            "| case | profiled step s | memory ops | whitening ops (covariance, BSW mask, loss) | largest ops |",
            "|---|---|---|---|---|",
        ]
        for r in shares:
            sh = r["op_share"]
            top = ", ".join(f"{k.removeprefix('mgid::')} {v * 1e3:.1f} ms" for k, v in list(sh["per_op_s"].items())[:4])
            lines.append(f"| {r['label']} | {sh['profiled_step_s']:.3f} | {sh['memory_share']:.1%} | "
                         f"{sh['whitening_share']:.1%} | {top} |")
        lines.append("")
    lines += [
        "## Data loading",
        "",
        f"`make_dataset(None, \"train\", {s['crop']}, seed, embedded=cfg.embedded)` "
        f"({result['data_set']}) through `DataLoader(batch_size={s['batch']}, num_workers=k)`; "
        f"{s['data_batches']} batches timed after the first.",
        "",
        "| workers | pairs/s | s/batch | first batch s | other load |",
        "|---|---|---|---|---|",
    ]
    for r in result["data_loading"]:
        if r["status"] != "ok":
            lines.append(f"| {r['workers']} | **failed**: {(r['error'] or '')[:ERROR_CHARS]} | | | |")
            continue
        lines.append(f"| {r['workers']} | {r['pairs_per_s']:.1f} | {r['s_per_batch']:.3f} | {r['first_batch_s']:.2f} | "
                     f"{_f(r.get('other_load_share'), '.0%')} |")
    lines += ["", result["data_summary"]["verdict"], ""]
    c = result["curve"]
    lines += ["## Loss curve: fp32 eager vs the fast path", ""]
    if c.get("status") == "skipped":
        lines += [f"Skipped: {c['reason']}.", ""]
    else:
        st = c.get("stats", {})
        lines += [
            f"Both from seed {s['seed']} on the same {c['steps']} batches (rendered once), {c['threads']} thread(s), "
            f"fused ops, learning rate: {c['schedule_note']}. fp32: {c['fp32']['status']} "
            f"({_f(c['fp32'].get('seconds'), '.0f')} s); fast (bf16 + channels_last): {c['fast']['status']} "
            f"({_f(c['fast'].get('seconds'), '.0f')} s).",
            "",
        ]
        for name in ("fp32", "fast"):
            if c[name]["status"] != "ok":
                lines += [f"- {name} run failed: {c[name]['error']}"]
        if st.get("steps_compared"):
            lines += [
                f"| over steps {st['last_half_from_step']}-{st['steps_compared']} | value |",
                "|---|---|",
                f"| mean total loss, fp32 | {st['mean_fp32']:.5f} |",
                f"| mean total loss, fast path | {st['mean_fast']:.5f} |",
                f"| mean abs difference per step | {st['mean_abs_diff']:.5f} ({_f(st['relative_mean_abs_diff'], '.2%')} "
                f"of the fp32 mean) |",
                f"| mean difference (fast - fp32) | {st['mean_diff_fast_minus_fp32']:+.5f} |",
                f"| std of the fp32 curve (batch-to-batch) | {st['std_fp32']:.5f} |",
                f"| abs difference at step 1 (same weights) | {st['first_step_abs_diff']:.5f} |",
                "",
            ]
        lines += [f"Plot: {c.get('plot') or 'not written: ' + str(c.get('plot_note'))}", ""]
    if result["errors"]:
        lines += ["## Errors", ""] + [f"- {e}" for e in result["errors"]] + [""]
    lines += [f"Elapsed: {result['elapsed_s']} s.", ""]
    return "\n".join(lines)
