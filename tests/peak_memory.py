"""Run Python code in a fresh interpreter and measure its peak resident memory (tests of bounded memory).

`run_measured(code)` starts ``python -c`` with the test's environment (one thread), lets ``code`` run, and returns
the child's exit code, output and peak RSS (``VmHWM`` of /proc/self/status, read by the child at its end) and the
RSS it had after its imports (``BASELINE`` is printed by ``mark_baseline()``, which ``code`` calls once it has
imported what it needs). Measured, not capped: a cap on the address space (RLIMIT_AS) also counts the huge
virtual reservations of the torch and OpenCV libraries, which use no memory; the peak RSS is what runs a machine
out of memory. ``limit_bytes`` also caps the child's data segment (RLIMIT_DATA, heap allocations only) so a
regression fails fast instead of swapping the test machine.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

PRELUDE = '''
import os, re, resource, sys
def _rss(field):
    text = open("/proc/self/status").read()
    return int(re.search(field + r":\\s+(\\d+) kB", text).group(1)) * 1024
def mark_baseline():
    # Reset the peak to the current RSS so that only what follows counts (Linux: clear_refs 5).
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    print("BASELINE", _rss("VmRSS"), flush=True)
'''
EPILOGUE = '''
print("PEAK", _rss("VmHWM"), flush=True)
'''


@dataclass
class Measured:
    """A child run: exit code, stdout, stderr, peak RSS and the RSS at ``mark_baseline()`` (bytes)."""

    returncode: int
    stdout: str
    stderr: str
    peak: int | None
    baseline: int | None

    @property
    def growth(self) -> int:
        """Peak RSS above the baseline (bytes): what the measured work needed."""
        assert self.peak is not None and self.baseline is not None, self.stderr[-2000:]
        return self.peak - self.baseline


def run_measured(code: str, limit_bytes: int | None = None, timeout: float = 300) -> Measured:
    """Run ``code`` (which calls ``mark_baseline()`` after its imports) in a child; see the module doc."""
    if limit_bytes is not None:
        code = (f"import resource\nresource.setrlimit(resource.RLIMIT_DATA, ({int(limit_bytes)}, {int(limit_bytes)}))\n"
                + code)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", PRELUDE + code + EPILOGUE], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=REPO)
    peak = re.search(r"^PEAK (\d+)$", proc.stdout, re.M)
    base = re.search(r"^BASELINE (\d+)$", proc.stdout, re.M)
    return Measured(proc.returncode, proc.stdout, proc.stderr, int(peak.group(1)) if peak else None,
                    int(base.group(1)) if base else None)
