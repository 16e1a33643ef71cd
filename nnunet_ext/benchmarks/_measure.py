"""Measuring shared by the benchmarks: peak memory of a block of code, fresh worker subprocesses, and scratch
environments (nnU-Net's folders in a temporary folder, restored afterwards).

Peak memory on the CPU is the peak resident set during the block minus the resident set just before it (peak
reset through ``/proc/self/clear_refs``; where that is refused, ``ru_maxrss``). Memory workers run with glibc's
mmap threshold fixed at 128 KiB (``MALLOC_MMAP_THRESHOLD_``), so freed tensors go back to the OS and the resident
set follows the live tensors. On CUDA: ``torch.cuda.max_memory_allocated`` above the allocation before the block.
"""
from __future__ import annotations

import contextlib
import gc
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator

import torch

MIB = 2 ** 20
NNUNET_FOLDERS = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")
#: size of the allocation a benchmark measures first, as a check of the meter
CALIBRATION_MIB = 256


def status_mib(key: str) -> float | None:
    """A field of /proc/self/status (VmRSS, VmHWM) in MiB, None where unavailable."""
    try:
        for text_line in Path("/proc/self/status").read_text().splitlines():
            if text_line.startswith(key + ":"):
                return int(text_line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return None


def available_mib() -> float | None:
    """MemAvailable from /proc/meminfo in MiB, None where unavailable."""
    try:
        for text_line in Path("/proc/meminfo").read_text().splitlines():
            if text_line.startswith("MemAvailable:"):
                return int(text_line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return None


def timed(fn: Callable[[], object]) -> float:
    """Seconds one call of ``fn`` takes."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def median_within_budget(call: Callable[[], float], repeats: int, budget_s: float) -> tuple[float, int]:
    """(median seconds, calls timed) of a timing ``call``: one warm-up call, then as many calls as fit in
    ``budget_s`` (at most ``repeats``); where none fits, the warm-up call's own time with 0 calls timed."""
    first = call()
    n = min(repeats, int(budget_s / max(first, 1e-9)))
    times = [call() for _ in range(n)]
    return (statistics.median(times) if times else first), n


class PeakMeter:
    """Peak memory of a block above the level just before it (CPU: resident set; CUDA: allocated)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.method = ""

    def start(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device) / MIB
            self.method = "torch.cuda.max_memory_allocated"
            return
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets the peak resident set (VmHWM) to the current one
            self.method = "VmHWM after clear_refs"
        except OSError:
            self.method = "ru_maxrss"
        rss = status_mib("VmRSS")
        self.base = rss if rss is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def stop(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device) / MIB - self.base
        hwm = status_mib("VmHWM") if self.method.startswith("VmHWM") else None
        peak = hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return max(0.0, peak - self.base)


def calibration_worker(device: torch.device) -> dict:
    """Measures a CALIBRATION_MIB allocation (run in a memory worker): {"peak_mib", "meter"}."""
    torch.ones(1024, device=device).sum()  # loads the fill kernel's code before measuring
    meter = PeakMeter(device)
    meter.start()
    block = torch.ones(CALIBRATION_MIB * MIB // 4, dtype=torch.float32, device=device)
    del block
    return {"peak_mib": meter.stop(), "meter": meter.method}


def run_worker(module: str, spec: dict, memory: bool) -> dict:
    """Run ``module._worker(json.dumps(spec))`` in a fresh single-threaded Python; returns the dict it printed
    as ``RESULT {json}`` (its last such line). ``memory`` selects the allocator setting described above."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    if memory:
        env["MALLOC_MMAP_THRESHOLD_"] = "131072"  # freed tensors go back to the OS: RSS follows live tensors
    else:
        env.pop("MALLOC_MMAP_THRESHOLD_", None)  # glibc's default, as in training
    code = f"import sys; from {module} import _worker; sys.exit(_worker(sys.argv[1]))"
    done = subprocess.run([sys.executable, "-c", code, json.dumps(spec)], env=env, capture_output=True, text=True)
    for text_line in reversed(done.stdout.splitlines()):
        if text_line.startswith("RESULT "):
            return json.loads(text_line[len("RESULT "):])
    killed = " (killed: out of memory?)" if done.returncode < 0 else ""
    raise RuntimeError(f"benchmark worker {module} {spec.get('method', '')} failed with exit code "
                       f"{done.returncode}{killed}:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")


@contextlib.contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """``os.environ`` updated with ``values`` inside the block; every variable restored (or removed) after it."""
    previous = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.contextmanager
def scratch_nnunet_folders(subfolders: bool = False, **extra: str) -> Iterator[Path]:
    """nnU-Net's three folders in one new temporary folder (``subfolders``: raw/, preprocessed/, results/ inside
    it), plus the ``extra`` variables, for the block; the variables restored and the folder removed after it."""
    scratch = Path(tempfile.mkdtemp(prefix="nnunet_ext_benchmark_"))
    folders = {name: str(scratch / name.split("_", 1)[1] if subfolders else scratch) for name in NNUNET_FOLDERS}
    try:
        with environment({**folders, **extra}):
            yield scratch
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def measured(run_case, module: str, spec: dict, in_process: bool, with_time: bool = True) -> dict:
    """``spec`` measured as the benchmarks measure: memory in a fresh worker with the memory allocator setting,
    time (``with_time``) in another with glibc's default allocator (the fixed mmap threshold slows
    allocation-heavy code, e.g. GLNet's many tile-sized temporaries, by up to 2-3x), merged; ``in_process``: in
    this process (``run_case({..., "measure": "both"})``, or "memory"). A failed worker gives {"error": its first
    line}."""
    try:
        if in_process:
            return run_case({**spec, "measure": "both" if with_time else "memory"})
        memory = run_worker(module, {**spec, "measure": "memory"}, memory=True)
        if not with_time:
            return memory
        return {**memory, **run_worker(module, {**spec, "measure": "time"}, memory=False)}
    except (RuntimeError, torch.cuda.OutOfMemoryError) as error:
        lines = [line for line in str(error).strip().splitlines() if line.strip()]
        killed = next((line for line in lines if "killed" in line), None)
        return {"error": (killed or (lines[0] if lines else "failed"))[:100]}


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """torch on one thread inside the block (the previous setting restored: matters in-process)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
