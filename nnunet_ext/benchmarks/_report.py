"""Printing shared by the benchmarks: plain-text tables and the machine/version header."""
from __future__ import annotations

import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Sequence


def table(title: str, header: Sequence[str], rows: Sequence[Sequence[object]], notes: Sequence[str] = ()) -> None:
    """Print a plain-text table with right-aligned columns (the first one left-aligned)."""
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]

    def line(row: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))

    print(f"\n{title}")
    print(line(cells[0]))
    print("  ".join("-" * w for w in widths))
    for row in cells[1:]:
        print(line(row))
    for note in notes:
        print(f"  {note}")


def print_header(name: str, versions: str, lines: Sequence[str]) -> None:
    """The banner every benchmark starts with: name, CPU, ``versions`` (after Python's), then ``lines``."""
    print("=" * 100)
    print(f"nnunet-ext benchmark: {name}")
    print(f"CPU: {cpu_name()} ({os.cpu_count()} logical cores visible), {platform.platform()}")
    print(f"python {platform.python_version()}, {versions}")
    for line in lines:
        print(line)
    print("=" * 100)


def milliseconds(seconds: float, decimals: int = 0) -> str:
    """Seconds as a millisecond figure for a table cell, e.g. 0.0123 -> '12'."""
    return f"{seconds * 1e3:.{decimals}f}"


def versions(*packages: str) -> str:
    """'numpy 2.4.6, scipy 1.17.1, ...' for the installed distributions named (for the benchmark header)."""
    return ", ".join(f"{p} {package_version(p)}" for p in packages)


def native_thread_pools() -> str:
    """The native thread pools threadpoolctl sees, e.g. 'openblas=2, openmp=2' ('none' if none)."""
    from threadpoolctl import threadpool_info
    return ", ".join(sorted({f"{p['internal_api']}={p['num_threads']}" for p in threadpool_info()})) or "none"


def package_version(package: str) -> str:
    """Installed version of a distribution, '?' if it is not installed."""
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "?"


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo, else what platform knows."""
    try:
        for text_line in Path("/proc/cpuinfo").read_text().splitlines():
            if text_line.startswith("model name"):
                return text_line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
