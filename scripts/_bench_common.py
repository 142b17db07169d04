"""Helpers shared by the benchmark scripts: child processes with peak RSS, machine notes, BENCHMARKS.md sections.

Each measured method runs in its own process so that its peak resident set size (the kernel's VmHWM of that
process, which the child prints itself) is its own and not the harness's.
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

REPO = Path(__file__).resolve().parent.parent
BENCHMARKS_MD = REPO / "BENCHMARKS.md"
RESULT_PREFIX = "BENCH_RESULT "


@dataclass
class ChildRun:
    """One measured child process."""

    ok: bool
    wall_s: float  # the whole process, interpreter start included
    peak_rss_mb: float  # the child's peak resident set size, VmHWM (MiB)
    result: Dict[str, Any] = field(default_factory=dict)  # what the child printed after RESULT_PREFIX
    error: str = ""


def run_child(cmd: Sequence[str], *, env: Optional[Dict[str, str]] = None, timeout: float = 3600) -> ChildRun:
    """Run `cmd` and return its wall time, its own peak RSS and the result it printed.

    A child reports its own numbers (e.g. the time of the measured step alone) by printing one line
    ``BENCH_RESULT {json}`` on stdout (see :func:`report`); a child that prints none (``cat``) gets ``{}``.
    """
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(list(cmd), stdout=out, stderr=err, env=env, text=True)
        deadline = start + timeout
        polled = 0.0
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            polled = max(polled, _vm_hwm_mb(proc.pid))
            if time.perf_counter() > deadline:
                proc.kill()
                _, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.005)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    result: Dict[str, Any] = {}
    for line in stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            result = json.loads(line[len(RESULT_PREFIX):])
    ok = proc.returncode == 0
    error = "" if ok else (stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1][:300]
    if wall > timeout:
        error = f"timed out after {timeout:.0f} s"
    # The child's own VmHWM (printed by `report`) is exact; `ru_maxrss` is not usable here: Linux carries the
    # parent's peak RSS over a fork into the child's, so a child of a big parent looks as big as its parent.
    # A child that prints nothing (cat) gets the largest VmHWM seen while polling it.
    rss = float(result.get("peak_rss_mb", polled))
    return ChildRun(ok, wall, rss, result, error)


def _vm_hwm_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        pass
    return 0.0


def peak_rss_mb() -> float:
    """This process's peak resident set size (VmHWM), in MiB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def report(result: Dict[str, Any]) -> None:
    """Print a child's result line (call last, after the measured work)."""
    result = dict(result)
    result.setdefault("peak_rss_mb", peak_rss_mb())
    print(RESULT_PREFIX + json.dumps(result), flush=True)


def machine_note() -> str:
    """CPU model, core count, memory and library versions, in one line."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kb / 1024 / 1024:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    versions = []
    for mod in ("torch", "safetensors", "transformers"):
        try:
            versions.append(f"{mod} {__import__(mod).__version__}")
        except ImportError:
            pass
    return f"{cpu}, {os.cpu_count()} cores{mem}, Python {platform.python_version()}, {', '.join(versions)}"


def write_section(title: str, body: str, path: Path = BENCHMARKS_MD) -> None:
    """Replace the ``## {title}`` section of BENCHMARKS.md (up to the next ``## `` header), or append it."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    header = f"## {title}"
    block = f"{header}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^{re.escape(header)}[ \t]*\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: block + "\n", text, count=1)
        text = text.rstrip("\n") + "\n"
    else:
        text = text.rstrip("\n") + "\n\n" + block
    path.write_text(text)


def markdown_table(header: List[str], rows: List[List[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def python_cmd() -> List[str]:
    return [sys.executable]
