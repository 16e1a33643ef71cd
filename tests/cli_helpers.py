"""Running the real command-line tools as subprocesses."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent


def clean_env(**extra: str) -> dict:
    """The environment a user has after ``pip install``: no nnUNet_extTrainer, tiny CPU settings."""
    env = {k: v for k, v in os.environ.items() if k not in ("nnUNet_extTrainer", "NNUNET_EXT_NO_AUTOREGISTER")}
    env.update({"nnUNet_def_n_proc": "1", "nnUNet_n_proc_DA": "0", "nnUNet_compile": "f",
                "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    env.update(extra)
    return env


def _tool(name: str) -> str:
    """A console script of this environment (the one pytest runs in), else whatever PATH finds."""
    return str(BIN / name) if (BIN / name).exists() else name


def start(command: list[str], env: dict) -> subprocess.Popen:
    """Start a command in the background, its output discarded."""
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def run(command: list[str], env: dict, timeout: int = 600, check: bool = True) -> subprocess.CompletedProcess:
    """Run a console script from this environment's bin folder; on failure show its output."""
    result = subprocess.run([_tool(command[0]), *command[1:]], env=env, capture_output=True, text=True,
                            timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(command)} exited {result.returncode}\n--- stdout ---\n"
                             f"{result.stdout[-6000:]}\n--- stderr ---\n{result.stderr[-6000:]}")
    return result
