"""``nnunet-ext demo`` (``make demo``): the core user story end to end on the CPU, on generated data.

Generates a small 2D tubular dataset, runs nnU-Net's own ``nnUNetv2_plan_and_preprocess``, trains
``nnUNetTrainerSkelRecall_short`` with ``nnUNetv2_train -device cpu``, predicts the held-out cases with
``nnUNetv2_predict``, prints their Dice and writes ``demo_overlay.png`` (image | label | tube | prediction).
"""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from PIL import Image

from nnunet_ext.cli.nnunet_commands import run_command
from nnunet_ext.core.skeleton import tubed_skeleton
from nnunet_ext.testing.synthetic import write_tubular_dataset

DATASET_ID = 990
TRAINER = "nnUNetTrainerSkelRecall_short"
COLOURS = {1: (230, 60, 60)}


def _run(step: str, command: list[str], env: dict, log: Path) -> None:
    print(f"[demo] {step}: {' '.join(command)}", flush=True)
    finished = run_command(command, env, log=log, check=False)
    if finished.returncode != 0:
        raise SystemExit(f"[demo] {step} failed (exit {finished.returncode}); see {log}")
    print(f"[demo]   done in {finished.wall_s:.0f} s", flush=True)


def dice(prediction: np.ndarray, reference: np.ndarray) -> float:
    """Foreground Dice of two label maps (1.0 when both are empty)."""
    p, r = prediction > 0, reference > 0
    denominator = p.sum() + r.sum()
    return 1.0 if denominator == 0 else float(2 * (p & r).sum() / denominator)


def _panel(image: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    grey = (255 * (image - image.min()) / max(float(np.ptp(image)), 1e-6)).astype(np.uint8)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    if mask is not None:
        rgb[mask > 0] = (0.35 * rgb[mask > 0] + 0.65 * np.array(COLOURS[1])).astype(np.uint8)
    return rgb


def write_overlay(image: np.ndarray, label: np.ndarray, prediction: np.ndarray, path: Path) -> None:
    """Four panels side by side: image, label, tubed skeleton of the label, prediction (2D arrays)."""
    panels = [_panel(image, None), _panel(image, label), _panel(image, tubed_skeleton(label)),
              _panel(image, prediction)]
    gap = np.full((image.shape[0], 4, 3), 255, np.uint8)
    row = np.concatenate([p for panel in panels for p in (panel, gap)][:-1], axis=1)
    Image.fromarray(row).resize((row.shape[1] * 3, row.shape[0] * 3), Image.NEAREST).save(path)


def _read(path: Path) -> np.ndarray:
    return np.squeeze(sitk.GetArrayFromImage(sitk.ReadImage(str(path))))


def run_demo(workdir: str = "demo_output", epochs: int | None = None, iterations: int | None = None) -> int:
    work = Path(workdir).resolve()
    if work.exists():
        shutil.rmtree(work)
    folders = {name: work / name for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
    for folder in folders.values():
        folder.mkdir(parents=True)
    env = {**os.environ, **{k: str(v) for k, v in folders.items()},
           "nnUNet_def_n_proc": "1", "nnUNet_n_proc_DA": "1", "nnUNet_compile": "f",
           "NNUNET_EXT_EPOCHS": str(epochs or 12), "NNUNET_EXT_ITERATIONS": str(iterations or 25),
           "NNUNET_EXT_VAL_ITERATIONS": "5"}
    log = work / "demo.log"
    total = time.perf_counter()

    raw = Path(write_tubular_dataset(DATASET_ID, dim=2, n_train=16, n_test=4, shape=(128, 128), seed=0,
                                     raw_root=str(folders["nnUNet_raw"]), name="DemoTubes2D"))
    print(f"[demo] wrote {raw} (16 training, 4 held-out cases)")
    ds = str(DATASET_ID)
    _run("plan and preprocess", ["nnUNetv2_plan_and_preprocess", "-d", ds, "-c", "2d", "-np", "1", "-npfp", "1"], env, log)
    _run("train", ["nnUNetv2_train", ds, "2d", "0", "-tr", TRAINER, "-device", "cpu"], env, log)
    predictions = work / "predictions"
    _run("predict", ["nnUNetv2_predict", "-i", str(raw / "imagesTs"), "-o", str(predictions), "-d", ds,
                     "-c", "2d", "-tr", TRAINER, "-f", "0", "-device", "cpu", "-npp", "1", "-nps", "1"], env, log)

    scores = []
    print("[demo] held-out Dice:")
    for label_file in sorted((raw / "labelsTs").glob("*.nii.gz")):
        score = dice(_read(predictions / label_file.name), _read(label_file))
        scores.append(score)
        print(f"    {label_file.name:24s} {score:.4f}")
    print(f"    {'mean':24s} {np.mean(scores):.4f}")

    first = sorted((raw / "labelsTs").glob("*.nii.gz"))[0]
    overlay = work / "demo_overlay.png"
    write_overlay(_read(raw / "imagesTs" / first.name.replace(".nii.gz", "_0000.nii.gz")), _read(first),
                  _read(predictions / first.name), overlay)
    print(f"[demo] overlay (image | label | tube | prediction): {overlay}")
    print(f"[demo] finished in {time.perf_counter() - total:.0f} s; nnU-Net output in {work}")
    return 0
