"""Training-step benchmark: ``nnunet-ext benchmark train_step [--device cuda|cpu] [--trainers ...] [--quick]``.

For every registered trainer (architecture x loss; variants and ``_short`` schedules aside) and nnU-Net's own
``nnUNetTrainer`` as the baseline, on the same plans (nnU-Net's topology for a 3D 128³ patch, batch 2, or
``--patch``/``--batch``): the trainer is built as ``nnUNetv2_train`` builds it (its network from the plans,
``torch.compile`` of the network and of ``loss.dc`` as nnU-Net does on CUDA unless ``nnUNet_compile=f``, its loss,
mixed precision through nnU-Net's autocast and grad scaler), then its own ``train_step`` runs on prepared batches
(made once by the trainer's own data pipeline: tube, border map, deep-supervision targets).

Reported per trainer, against nnUNetTrainer in the same run: median step time (after warm-up steps, which include
compilation; their time is reported too) and peak CUDA memory of the timed steps (``max_memory_allocated``). Each
trainer runs in a fresh subprocess (compile caches and allocator state do not carry over).

Without CUDA it says so and stops, unless ``--device cpu`` (no compile, as nnU-Net on the CPU; peak resident memory
instead of CUDA memory), which with ``--quick`` (2D 64², 3 stages) is the smoke run the tests use.
The papers' figures for comparison: Skeleton Recall +8% time, +2% memory over nnU-Net; clDice +88%, +52%.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

from nnunet_ext.benchmarks._measure import MIB, PeakMeter, run_worker, scratch_nnunet_folders
from nnunet_ext.benchmarks._plans import benchmark_plans
from nnunet_ext.benchmarks._report import package_version, print_header, table

_WORKER = "nnunet_ext.benchmarks.train_step"
BASELINE = "nnUNetTrainer"


def registered_trainers() -> list[str]:
    """nnUNetTrainer, then every architecture x loss of the registry (no variants, no short schedules)."""
    from nnunet_ext.trainers.registry import trainer_specs
    return [BASELINE] + [s.name for s in trainer_specs() if not (s.variant or s.short)]


def _prepared_batches(trainer, n: int) -> list[dict]:
    """``n`` batches of synthetic tube cases through the trainer's own validation pipeline (no augmentation, so
    every trainer gets the same images and labels)."""
    import numpy as np
    from nnunet_ext.testing.synthetic import tubular_case
    lm = trainer.label_manager
    pipeline = trainer.get_validation_transforms(trainer._get_deep_supervision_scales(), is_cascaded=False,
                                                 foreground_labels=lm.foreground_labels, regions=None,
                                                 ignore_label=lm.ignore_label)
    patch = tuple(trainer.configuration_manager.patch_size)
    batches = []
    for b in range(n):
        samples = []
        for i in range(trainer.configuration_manager.batch_size):
            image, label = tubular_case(patch, n_classes=len(lm.foreground_labels), seed=100 * b + i)
            samples.append(pipeline(image=torch.from_numpy(image)[None],
                                    segmentation=torch.from_numpy(label.astype(np.int16))[None]))
        segs = [s["segmentation"] for s in samples]
        target = ([torch.stack([s[k] for s in segs]) for k in range(len(segs[0]))] if isinstance(segs[0], list)
                  else torch.stack(segs))
        batches.append({"data": torch.stack([s["image"] for s in samples]), "target": target})
    return batches


def _build(trainer_name: str, spec: dict):
    """The trainer with network (compiled as nnU-Net compiles it), optimizer and loss, as ``initialize()`` sets
    them up (without the preprocessed dataset it also opens)."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunet_ext import trainers
    cls = nnUNetTrainer if trainer_name == BASELINE else getattr(trainers, trainer_name)
    plans, dataset_json, configuration = benchmark_plans(spec["patch"], spec["batch"])
    plans["continue_training"] = False
    trainer = cls(plans, configuration, 0, dataset_json, device=torch.device(spec["device"]))
    lm = trainer.label_manager
    trainer.network = trainer.build_network_architecture(trainer.plans_manager, trainer.configuration_manager, 1,
                                                         lm.num_segmentation_heads, True).to(trainer.device)
    compiled = trainer._do_i_compile()
    if compiled:
        trainer.network = torch.compile(trainer.network)
    trainer.optimizer, trainer.lr_scheduler = trainer.configure_optimizers()
    trainer.loss = trainer._build_loss()
    for module in trainer.loss.modules():  # LED at full strength (warm-up done)
        if hasattr(module, "strength"):
            module.strength = 1.0
    return trainer, compiled


def _worker(spec_json: str) -> int:
    spec = json.loads(spec_json)
    device = torch.device(spec["device"])
    torch.manual_seed(0)
    try:
        with scratch_nnunet_folders():  # the trainer writes its log under nnUNet_results
            trainer, compiled = _build(spec["trainer"], spec)
            batches = _prepared_batches(trainer, 2)
            start = time.perf_counter()
            for step in range(spec["warmup"]):
                trainer.train_step(batches[step % len(batches)])
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            warmup_s = time.perf_counter() - start
            meter = PeakMeter(device)
            meter.start()
            times = []
            for step in range(spec["steps"]):
                start = time.perf_counter()
                result = trainer.train_step(batches[step % len(batches)])
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                times.append(time.perf_counter() - start)
            peak = meter.stop()
            if device.type == "cuda":
                peak = torch.cuda.max_memory_allocated(device) / MIB  # the whole step, weights included
            print("RESULT " + json.dumps({"step_s": statistics.median(times), "warmup_s": warmup_s, "peak_mib": peak,
                                          "compiled": compiled, "loss": float(result["loss"]), "meter": meter.method}))
    except torch.cuda.OutOfMemoryError as error:
        print("RESULT " + json.dumps({"error": f"out of CUDA memory ({str(error).splitlines()[0][:80]})"}))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nnunet-ext benchmark train_step", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--trainers", nargs="+", default=None, help="trainer names (default: every registered one)")
    parser.add_argument("--patch", type=int, nargs="+", default=None, help="patch size (default 128 128 128)")
    parser.add_argument("--batch", type=int, default=2, help="batch size (default 2)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps (default 10)")
    parser.add_argument("--warmup", type=int, default=3, help="steps before timing, compilation included (3)")
    parser.add_argument("--quick", action="store_true", help="2D 64², 2 steps, 1 warm-up (smoke run)")
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("nnunet-ext benchmark train_step needs a CUDA GPU (torch.cuda.is_available() is False here). "
              "For a CPU smoke run of the same code: nnunet-ext benchmark train_step --device cpu --quick")
        return 2
    patch = args.patch or ([64, 64] if args.quick else [128, 128, 128])
    steps, warmup = (2, 1) if args.quick else (args.steps, args.warmup)
    names = args.trainers or registered_trainers()
    if BASELINE not in names:
        names = [BASELINE] + names
    device_name = torch.cuda.get_device_name(0) if args.device == "cuda" else "CPU"
    compile_note = os.environ.get("nnUNet_compile", "default (on for CUDA)")
    print_header("train_step", f"torch {torch.__version__}, nnunetv2 {package_version('nnunetv2')}",
                 [f"device {args.device} ({device_name}); patch {patch}, batch {args.batch}; {warmup} warm-up + "
                  f"{steps} timed steps per trainer, median; nnUNet_compile {compile_note}; fresh process each"])
    results = {}
    for name in names:
        spec = {"trainer": name, "device": args.device, "patch": patch, "batch": args.batch, "steps": steps,
                "warmup": warmup}
        try:
            results[name] = run_worker(_WORKER, spec, memory=args.device == "cpu")
        except RuntimeError as error:
            results[name] = {"error": str(error).splitlines()[0][:100]}
        print(f"  {name}: " + (results[name].get("error") or f"{results[name]['step_s'] * 1e3:.0f} ms"), flush=True)
    base = results[BASELINE]
    rows = []
    for name, r in results.items():
        if "error" in r:
            rows.append([name, r["error"], "", "", "", ""])
            continue
        ratio = (lambda key: f"{r[key] / base[key]:.2f}x" if "error" not in base and base[key] else "-")
        rows.append([name, f"{r['step_s'] * 1e3:.0f}", ratio("step_s"), f"{r['peak_mib']:.0f}", ratio("peak_mib"),
                     f"{r['warmup_s']:.0f}"])
    memory = "peak CUDA MiB" if args.device == "cuda" else "peak RSS MiB"
    table("Training step vs nnUNetTrainer (same plans, same batches)",
          ["trainer", "step ms", "time", memory, "memory", "warm-up s"], rows,
          ["time, memory: ratio to nnUNetTrainer's in this run; warm-up includes torch.compile where it is on",
           "papers: Skeleton Recall +8% time, +2% memory; clDice +88% time, +52% memory (vs nnU-Net)"])
    return 0
