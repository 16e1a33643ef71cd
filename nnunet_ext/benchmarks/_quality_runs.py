"""The quality benchmark's steps, each one real command-line call: plan, train, predict, evaluate.

Every step runs nnU-Net's (or nnunet-ext's) console script as a subprocess, with its output in a log file;
training also reports its peak resident memory (``os.wait4``) and, on CUDA, its peak CUDA memory.
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Sequence

from nnunet_ext.cli.nnunet_commands import CommandFailed, Finished, console_script as tool, run_command

#: plans identifier of the CPU budget's reduced plans (written next to nnU-Net's nnUNetPlans.json)
REDUCED_PLANS = "nnUNetPlans_cpu"
#: where the training wrapper writes the peak CUDA memory (bytes) of the training process
PEAK_CUDA_FILE_ENV = "NNUNET_EXT_PEAK_CUDA_FILE"
_EPOCH_TIME = re.compile(r"Epoch time: ([0-9.]+) s")


class StepFailed(RuntimeError):
    """A command exited non-zero; the message names the command and its log."""


def run_logged(command: Sequence[str], env: dict[str, str], log: Path) -> Finished:
    """Run ``command`` with its output appended to ``log``; raise StepFailed on a non-zero exit."""
    try:
        return run_command(command, env, log=log)
    except CommandFailed as failed:
        raise StepFailed(str(failed)) from None


def plan_and_preprocess(dataset_id: int, configuration: str, env: dict[str, str], log: Path,
                        processes: int, gpu_memory_target: float | None = None) -> None:
    """nnU-Net's planning and preprocessing of one configuration (the planner needs nnUNet_n_proc_DA >= 1);
    ``gpu_memory_target`` (GB) replaces the planner's 8 GB."""
    target = ["-gpu_memory_target", f"{gpu_memory_target:g}"] if gpu_memory_target is not None else []
    run_logged([tool("nnUNetv2_plan_and_preprocess"), "-d", str(dataset_id), "-c", configuration,
                "-np", str(processes), "-npfp", str(processes), *target], {**env, "nnUNet_n_proc_DA": "1"}, log)


def plan_own(dataset_id: int, arch_key: str, identifier: str, configuration: str, env: dict[str, str], log: Path,
             processes: int, gpu_memory_target: float | None = None) -> None:
    """``nnunet-ext plan -d ID --arch KEY --preprocess -c CONF``: a registered network's own planner (GLNet's
    window), at ``gpu_memory_target`` GB (None: the planner's 8), writing ``identifier``.json."""
    target = ["-gpu_memory_target", f"{gpu_memory_target:g}"] if gpu_memory_target is not None else []
    run_logged([tool("nnunet-ext"), "plan", "-d", str(dataset_id), "--arch", arch_key, "-overwrite_plans_name",
                identifier, "--preprocess", "-c", configuration, "-np", str(processes), "-npfp", str(processes),
                *target], {**env, "nnUNet_n_proc_DA": "1"}, log)


def preprocess(dataset_id: int, configuration: str, env: dict[str, str], log: Path, processes: int) -> None:
    """nnU-Net's preprocessing of one more configuration of already planned plans."""
    run_logged([tool("nnUNetv2_preprocess"), "-d", str(dataset_id), "-c", configuration, "-np", str(processes)],
               env, log)


def write_reduced_plans(plans_file: Path, feature_scale: float, identifier: str = REDUCED_PLANS) -> str:
    """Copy a plans file with every configuration's features per stage scaled, as ``identifier``.json next to
    it (default ``nnUNetPlans_cpu``; the benchmark names GLNet's ``nnUNetPlans_GLNet_cpu``); returns
    ``identifier``.

    Patch size, spacing, network class and its other options, and preprocessing are unchanged (same data
    identifier, so the preprocessed data is shared); only the network width shrinks (e.g. 32..512 -> 16..256 with
    scale 0.5).
    """
    if not identifier or identifier == plans_file.stem:
        raise ValueError(f"the reduced plans need their own identifier, not {identifier!r} (it would replace "
                         f"{plans_file.name})")
    plans = json.loads(plans_file.read_text())
    plans["plans_name"] = identifier
    for configuration in plans["configurations"].values():
        kwargs = configuration.get("architecture", {}).get("arch_kwargs", {})
        if "features_per_stage" in kwargs:
            kwargs["features_per_stage"] = [max(4, int(round(f * feature_scale)))
                                            for f in kwargs["features_per_stage"]]
    (plans_file.parent / f"{identifier}.json").write_text(json.dumps(plans, indent=2))
    return identifier


def fold_folder(results: Path, dataset_name: str, trainer: str, plans: str, configuration: str) -> Path:
    """Where nnU-Net writes fold 0 of ``trainer``."""
    return results / dataset_name / f"{trainer}__{plans}__{configuration}" / "fold_0"


def train(dataset_id: int, configuration: str, trainer: str, plans: str, device: str, env: dict[str, str],
          log: Path, peak_cuda_file: Path) -> tuple[Finished, int | None]:
    """``nnUNetv2_train ID CONF 0`` (fold 0). Returns (wall time and peak RSS, peak CUDA bytes or None).

    On CUDA the same entry point runs through a wrapper that records ``torch.cuda.max_memory_allocated``."""
    arguments = [str(dataset_id), configuration, "0", "-tr", trainer, "-p", plans, "-device", device]
    if device == "cuda":
        command = [sys.executable, "-m", "nnunet_ext.benchmarks._quality_train", *arguments]
        env = {**env, PEAK_CUDA_FILE_ENV: str(peak_cuda_file)}
    else:
        command = [tool("nnUNetv2_train"), *arguments]
    finished = run_logged(command, env, log)
    peak_cuda = int(peak_cuda_file.read_text()) if device == "cuda" and peak_cuda_file.exists() else None
    return finished, peak_cuda


def predict(images: Path, output: Path, dataset_id: int, configuration: str, trainer: str, plans: str,
            device: str, env: dict[str, str], log: Path, processes: int) -> Finished:
    """``nnUNetv2_predict`` of ``images`` with fold 0's final checkpoint.

    ``processes`` 1 predicts sequentially in the one process (``-npp 0 -nps 0``: no worker start-up)."""
    processes = 0 if processes == 1 else processes
    return run_logged([tool("nnUNetv2_predict"), "-i", str(images), "-o", str(output), "-d", str(dataset_id),
                       "-c", configuration, "-tr", trainer, "-p", plans, "-f", "0", "-device", device,
                       "-npp", str(processes), "-nps", str(processes)], env, log)


def evaluate(reference: Path, prediction: Path, dataset_json: Path, output: Path, env: dict[str, str],
             log: Path, processes: int, options: Sequence[str] = ()) -> dict:
    """``nnunet-ext evaluate`` (with ``options``, e.g. ``--families dice instance``); returns the written summary
    (foreground_mean, mean, metric_per_case)."""
    run_logged([tool("nnunet-ext"), "evaluate", str(reference), str(prediction), "-o", str(output),
                "-djfile", str(dataset_json), "-np", str(processes), "--no-progress", *options], env, log)
    return json.loads(output.read_text())


def analyse(mode: str, reference: Path, prediction: Path, output: Path, env: dict[str, str], log: Path) -> dict:
    """``python -m nnunet_ext.benchmarks._quality_analysis MODE REF PRED -o OUT`` (its own process: image reading
    is not thread-safe here); returns the written summary (foreground_mean, per_case)."""
    run_logged([sys.executable, "-m", "nnunet_ext.benchmarks._quality_analysis", mode, str(reference),
                str(prediction), "-o", str(output)], env, log)
    return json.loads(output.read_text())


def tube_checks(datasets: Sequence[str], configuration: str, plans: str, output: Path, env: dict[str, str],
                log: Path) -> None:
    """``python -m nnunet_ext.benchmarks._thick_vessels`` on prepared datasets (DatasetXXX_Name; its own process:
    it builds a trainer, and nnU-Net reads its folders from the environment when imported); writes markdown to
    ``output``."""
    names = [argument for name in datasets for argument in ("--dataset", name)]
    run_logged([sys.executable, "-m", "nnunet_ext.benchmarks._thick_vessels", *names, "--configuration",
                configuration, "--plans", plans, "-o", str(output)], env, log)


def epoch_times(fold: Path) -> list[float]:
    """Every "Epoch time: X s" of the fold's training logs, in order."""
    times: list[float] = []
    for log in sorted(fold.glob("training_log_*.txt")):
        times += [float(m) for m in _EPOCH_TIME.findall(log.read_text())]
    return times


def validation_reference(fold: Path, gt_segmentations: Path, file_ending: str, target: Path) -> Path:
    """A folder of links to the references of fold 0's validation cases (those nnU-Net predicted)."""
    target.mkdir(parents=True, exist_ok=True)
    cases = sorted(p.name for p in (fold / "validation").iterdir() if p.name.endswith(file_ending))
    if not cases:
        raise StepFailed(f"no validation predictions ({file_ending}) in {fold / 'validation'}")
    for name in cases:
        link = target / name
        if not link.exists():
            link.symlink_to((gt_segmentations / name).resolve())
    return target
