"""The one runner of command-line tools (nnU-Net's ``nnUNetv2_*`` and ``nnunet-ext``) as subprocesses.

Used by the demo, the benchmarks and the tests. Every call captures stdout and stderr separately, can append both
to a log file and hand every line to a callback (the demo's progress), measures wall time, CPU time of the
process tree and peak resident memory (``os.wait4``), and raises :class:`CommandFailed` (naming the command, its
exit status and its log or output tail) unless ``check=False``.
"""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence


@dataclass(frozen=True)
class Finished:
    """A finished command: exit status, output, wall seconds, CPU seconds (user + system, the whole process tree)
    and peak resident memory (bytes, of the largest single process).

    The peak is ``os.wait4``'s ``ru_maxrss``. Linux carries the caller's resident high-water mark into the child
    when it execs, so it is never below the caller's own resident set at the spawn: call from a small process to
    measure a small command."""
    command: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str
    wall_s: float
    cpu_s: float
    peak_rss_bytes: int


class CommandFailed(RuntimeError):
    """A command exited non-zero."""

    def __init__(self, finished: Finished, log: Path | None):
        self.finished = finished
        where = f"; see {log}" if log is not None else (f"\n--- stdout ---\n{finished.stdout[-6000:]}"
                                                         f"\n--- stderr ---\n{finished.stderr[-6000:]}")
        super().__init__(f"{' '.join(finished.command)} exited {finished.returncode} after {finished.wall_s:.0f} s"
                         f"{where}")


def console_script(name: str) -> str:
    """A console script of this environment (next to ``sys.executable``), else the name for PATH to find."""
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else name


def tiny_cpu_env(base: Mapping[str, str] | None = None, **extra: str) -> dict[str, str]:
    """``base`` (default: this process's environment) with the settings of small CPU runs: one preprocessing and
    one validation-export process, data augmentation in the training process, no torch.compile, one OpenMP thread,
    unbuffered Python output. ``extra`` overrides."""
    env = dict(os.environ if base is None else base)
    env.update({"nnUNet_def_n_proc": "1", "nnUNet_n_proc_DA": "0", "nnUNet_compile": "f", "OMP_NUM_THREADS": "1",
                "PYTHONUNBUFFERED": "1"})
    env.update(extra)
    return env


def _pump(stream, sink: list[str], log_file, lock: threading.Lock, on_line) -> None:
    for line in iter(stream.readline, ""):
        sink.append(line)
        with lock:
            if log_file is not None:
                log_file.write(line)
                log_file.flush()
            if on_line is not None:
                on_line(line.rstrip("\n"))
    stream.close()


def run_command(command: Sequence[str], env: Mapping[str, str] | None = None, *, log: Path | None = None,
                on_line: Callable[[str], None] | None = None, timeout: float | None = None,
                check: bool = True, cwd: str | Path | None = None) -> Finished:
    """Run ``command`` (its first element a console-script name or a path) and wait for it.

    ``log``: stdout and stderr are appended to this file (after a ``$ command`` line). ``on_line``: called with
    every output line as it arrives. ``timeout``: seconds, after which the process is killed (then returncode is
    negative). ``check``: raise :class:`CommandFailed` on a non-zero exit.
    """
    command = (console_script(command[0]), *map(str, command[1:]))
    log_file = None
    if log is not None:
        log = Path(log)
        log.parent.mkdir(parents=True, exist_ok=True)
        log_file = open(log, "a")
        log_file.write(f"$ {' '.join(command)}\n")
        log_file.flush()
    start = time.perf_counter()
    stdout: list[str] = []
    stderr: list[str] = []
    lock = threading.Lock()
    try:
        process = subprocess.Popen(command, env=None if env is None else dict(env), cwd=cwd, text=True, bufsize=1,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        pumps = [threading.Thread(target=_pump, args=(process.stdout, stdout, log_file, lock, on_line), daemon=True),
                 threading.Thread(target=_pump, args=(process.stderr, stderr, log_file, lock, on_line), daemon=True)]
        for pump in pumps:
            pump.start()
        killer = threading.Timer(timeout, process.kill) if timeout else None
        if killer is not None:
            killer.start()
        try:
            _, status, usage = os.wait4(process.pid, 0)
        finally:
            if killer is not None:
                killer.cancel()
        process.returncode = os.waitstatus_to_exitcode(status)
        for pump in pumps:
            pump.join()
    finally:
        if log_file is not None:
            log_file.close()
    finished = Finished(command, process.returncode, "".join(stdout), "".join(stderr), time.perf_counter() - start,
                        usage.ru_utime + usage.ru_stime, int(usage.ru_maxrss) * 1024)  # Linux: ru_maxrss in KiB
    if check and finished.returncode != 0:
        raise CommandFailed(finished, log)
    return finished


def start_command(command: Sequence[str], env: Mapping[str, str] | None = None) -> subprocess.Popen:
    """Start ``command`` in the background with its output discarded (e.g. a training to interrupt)."""
    return subprocess.Popen((console_script(command[0]), *map(str, command[1:])),
                            env=None if env is None else dict(env), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
