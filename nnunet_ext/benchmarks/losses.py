"""Loss benchmark: ``nnunet-ext benchmark losses [--quick] [--classes 1,3,13] [--repeats N] [--max-reference-gb G]``.

Loss forward + backward time and peak memory on 3D patches (default batch 2 x 64³; ``--quick`` 2 x 32³) with
1, 3 and 13 foreground classes, for

- ``DC+CE``: nnU-Net's Dice+CE (``DC_and_CE_loss`` with ``MemoryEfficientSoftDiceLoss``, nnU-Net's settings);
- ``DC+CE+SR``: Dice+CE + 1.0 x :class:`~nnunet_ext.losses.SoftSkeletonRecallLoss` (tube precomputed, as the
  data loader delivers it in training);
- ``clDice``: 0.5 x Dice+CE + 0.5 x :class:`~nnunet_ext.losses.cldice.SoftClDiceLoss` (10 iterations) with the
  memory-efficient :func:`~nnunet_ext.losses.cldice.soft_skeletonize`;
- ``clDice-ref``: the same with :func:`~nnunet_ext.losses.cldice.soft_skeletonize_reference`, the
  straightforward soft skeleton (autograd keeps every intermediate; ~1 GB per class at 2 x 64³). Skipped, and
  said so, where its extrapolated peak exceeds ``--max-reference-gb`` (default 16) or 80 % of the free memory.

Inputs: label maps from :func:`~nnunet_ext.testing.synthetic.tubular_case` (one tube per class at least), logits =
``4 * one_hot + N(0, 1)``, tubes from :func:`~nnunet_ext.core.skeleton.tubed_skeleton`. The baseline is DC+CE
measured in the same run on the same inputs; every ratio is against it.

Each (classes, loss) pair is measured by two fresh Python subprocesses, single-threaded (torch 1 thread,
OMP 1), after one call of the loss on an 8³ crop (loads code pages and lazy imports):

- memory: glibc's mmap threshold fixed at 128 KiB (``MALLOC_MMAP_THRESHOLD_``), so freed tensors go back to the
  OS and the resident set follows the live tensors; peak = peak resident set during one forward+backward minus
  the resident set just before it (peak reset through ``/proc/self/clear_refs``; where that is refused,
  ``ru_maxrss`` is used). A 256 MiB allocation is measured first as a check. On CUDA (``--device cuda``):
  ``torch.cuda.max_memory_allocated`` above the allocation before the call.
- time: glibc's default allocator (the fixed threshold would add page faults to every allocation); one warm-up
  call, then the median of up to ``--repeats`` calls (default 3), as many as fit in ``--time-budget`` seconds (10);
  where not even one fits, the warm-up call's own time is reported (marked ``1*``).

A default run takes about 5 minutes on a 2-core CPU, ``--quick`` about 1.5 minutes. Most of it is the soft
skeleton's max-pooling (CPU ``max_pool3d`` with 3³ windows runs at roughly 8 million voxels per second).
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from nnunet_ext.benchmarks._measure import (CALIBRATION_MIB, PeakMeter, available_mib, calibration_worker,
                                            median_within_budget, run_worker)
from nnunet_ext.benchmarks._report import package_version, print_header, table

METHODS = ("DC+CE", "DC+CE+SR", "clDice", "clDice-ref")


def _build_loss(method: str) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """loss(logits, seg, tube) -> scalar for one of METHODS."""
    from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss

    from nnunet_ext.losses import SoftSkeletonRecallLoss
    from nnunet_ext.losses.cldice import SoftClDiceLoss, soft_skeletonize_reference

    dcce = DC_and_CE_loss({"batch_dice": False, "smooth": 1e-5, "do_bg": False, "ddp": False}, {}, weight_ce=1,
                          weight_dice=1, ignore_label=None, dice_class=MemoryEfficientSoftDiceLoss)
    if method == "DC+CE":
        return lambda logits, seg, tube: dcce(logits, seg)
    if method == "DC+CE+SR":
        recall = SoftSkeletonRecallLoss()
        return lambda logits, seg, tube: dcce(logits, seg) + recall(logits, tube)
    if method in ("clDice", "clDice-ref"):
        cl = SoftClDiceLoss(iterations=10)
        if method == "clDice-ref":
            cl.skeletonize = soft_skeletonize_reference  # instance attribute shadows the class default
        return lambda logits, seg, tube: 0.5 * dcce(logits, seg) + 0.5 * cl(logits, seg)
    raise ValueError(f"unknown method {method!r}; choose from {METHODS}")


def _worker(spec_json: str) -> int:
    """Subprocess entry: measures one (inputs, method); prints ``RESULT {json}`` as its last line."""
    spec = json.loads(spec_json)
    torch.set_num_threads(1)
    device = torch.device(spec["device"])
    meter = PeakMeter(device)
    if spec["method"] == "calibrate":
        print("RESULT " + json.dumps(calibration_worker(device)))
        return 0
    data = torch.load(spec["inputs"])
    logits = data["logits"].to(device).requires_grad_()
    seg, tube = data["seg"].to(device), data["tube"].to(device)
    del data
    loss_fn = _build_loss(spec["method"])

    values: list[float] = []

    def call() -> float:
        logits.grad = None
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        loss = loss_fn(logits, seg, tube)
        loss.backward()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        elapsed = time.perf_counter() - start
        values.append(float(loss.detach()))
        del loss
        return elapsed

    # both modes: warm-up on a 8³ crop: loads kernels' code pages and lazy imports, which would count as peak memory
    crop = (slice(None), slice(None), *(slice(0, 8) for _ in logits.shape[2:]))
    small = logits.detach()[crop].clone().requires_grad_()
    loss_fn(small, seg[crop], tube[crop]).backward()
    del small

    if spec["mode"] == "memory":
        meter.start()
        call()
        print("RESULT " + json.dumps({"peak_mib": meter.stop(), "meter": meter.method, "loss": values[0]}))
        return 0
    # time: the first full call warms the allocator up; then as many calls as fit in the budget (at most
    # repeats). Where none fits, the first (cold) call's time is reported.
    time_s, n_timed = median_within_budget(call, spec["repeats"], spec["time_budget"])
    print("RESULT " + json.dumps({"time_s": time_s, "n_timed": n_timed, "loss": values[0]}))
    return 0


def _run_worker(spec: dict) -> dict:
    return run_worker("nnunet_ext.benchmarks.losses", spec, memory=spec.get("mode") == "memory")


# ------------------------------------------------------------------------------------------------------ inputs

def _make_inputs(n_classes: int, batch: int, size: int, seed: int) -> dict[str, torch.Tensor]:
    """logits (B, n_classes + 1, size³) float32, seg (B, 1, size³) int16, tube (B, 1, size³) int16."""
    from nnunet_ext.core.skeleton import tubed_skeleton
    from nnunet_ext.testing.synthetic import TubeStyle, tubular_case

    style = TubeStyle(n_tubes=max(5, n_classes))  # every class gets a tube
    segs = [tubular_case((size,) * 3, n_classes, seed=seed + b, style=style)[1].astype(np.int16)
            for b in range(batch)]
    seg = torch.from_numpy(np.stack(segs))[:, None]
    tube = torch.from_numpy(np.stack([tubed_skeleton(s) for s in segs]))[:, None]
    gen = torch.Generator().manual_seed(seed)
    one_hot = torch.zeros((batch, n_classes + 1, *seg.shape[2:])).scatter_(1, seg.long(), 1.0)
    logits = 4 * one_hot + torch.randn(one_hot.shape, generator=gen)
    return {"logits": logits, "seg": seg, "tube": tube}


# ------------------------------------------------------------------------------------------------------ main

def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="nnunet-ext benchmark losses", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2 x 32³ patches, 1 timed call per case")
    parser.add_argument("--classes", default="1,3,13", help="comma-separated foreground class counts (1,3,13)")
    parser.add_argument("--size", type=int, default=None, help="patch edge length (default 64, --quick 32)")
    parser.add_argument("--batch", type=int, default=2, help="batch size (default 2)")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per case at most (3, --quick 1)")
    parser.add_argument("--time-budget", type=float, default=10.0,
                        help="seconds of timed calls per case; fewer repeats where one call is slower (10)")
    parser.add_argument("--max-reference-gb", type=float, default=16.0,
                        help="skip clDice-ref where its extrapolated peak exceeds this many GB (16)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="cpu (default) or cuda")
    args = parser.parse_args(argv)
    try:
        args.classes = [int(c) for c in args.classes.split(",") if c.strip()]
    except ValueError:
        parser.error(f"--classes must be comma-separated integers, got {args.classes!r}")
    if not args.classes or min(args.classes) < 1:
        parser.error("--classes needs at least one count, each >= 1")
    if args.size is None:
        args.size = 32 if args.quick else 64
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3
    if args.size < 8 or args.batch < 1 or args.repeats < 1 or args.time_budget <= 0:
        parser.error("--size must be >= 8, --batch and --repeats >= 1, --time-budget > 0")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available; run without it (CPU)")
    return args


def _print_header(args: argparse.Namespace, meter: str, calibration: float) -> None:
    lines = [f"GPU: {torch.cuda.get_device_name()}"] if args.device == "cuda" else []
    lines += [f"device {args.device}; workers: fresh subprocesses per case (memory, time), torch 1 thread, OMP 1; "
              "memory runs with MALLOC_MMAP_THRESHOLD_=131072",
              f"patch: batch {args.batch} x {args.size}³, classes {args.classes}, repeats <= {args.repeats} "
              f"(median), time budget {args.time_budget:g} s per case, quick={args.quick}",
              f"peak memory: {meter}; check: a {CALIBRATION_MIB} MiB tensor measured as {calibration:.1f} MiB"]
    print_header("losses", f"torch {torch.__version__}, numpy {np.__version__}, "
                           f"nnunetv2 {package_version('nnunetv2')}", lines)


def main(argv: list[str]) -> int:
    """Run the benchmark; prints the tables. Returns 0."""
    args = _parse(argv)
    total = time.perf_counter()
    root = Path(tempfile.mkdtemp(prefix="nnunet_ext_bench_losses_"))
    base_spec = {"device": args.device, "repeats": args.repeats, "time_budget": args.time_budget}
    results: dict[tuple[int, str], dict[str, Any]] = {}
    skipped: dict[int, str] = {}
    try:
        calibration = _run_worker({**base_spec, "method": "calibrate", "mode": "memory"})
        _print_header(args, calibration["meter"], calibration["peak_mib"])
        per_class_ref: list[tuple[int, float]] = []
        for n_classes in args.classes:
            start = time.perf_counter()
            path = root / f"inputs_{n_classes}.pt"
            torch.save(_make_inputs(n_classes, args.batch, args.size, seed=100 * n_classes), path)
            print(f"\n({n_classes} class(es): inputs generated in {time.perf_counter() - start:.1f} s)", flush=True)
            for method in METHODS:
                if method == "clDice-ref":
                    reason = _reference_too_big(n_classes, per_class_ref, args.max_reference_gb)
                    if reason:
                        skipped[n_classes] = reason
                        print(f"  {method:<10} skipped: {reason}")
                        continue
                spec = {**base_spec, "method": method, "inputs": str(path)}
                res = {**_run_worker({**spec, "mode": "memory"}), **_run_worker({**spec, "mode": "time"})}
                results[n_classes, method] = res
                if method == "clDice-ref":
                    per_class_ref.append((n_classes, res["peak_mib"]))
                print(f"  {method:<10} {res['time_s'] * 1e3:9.1f} ms (n={_n(res)})  "
                      f"peak {res['peak_mib']:8.1f} MiB  loss {res['loss']:.4f}", flush=True)
            path.unlink()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    _report(args, results, skipped)
    print(f"\ntotal benchmark time {time.perf_counter() - total:.0f} s")
    return 0


def _n(res: dict[str, Any]) -> str:
    """Timed-call count; '1*' where the only call was the first (cold) one."""
    return str(res["n_timed"]) if res["n_timed"] else "1*"


def _reference_too_big(n_classes: int, measured: list[tuple[int, float]], max_gb: float) -> str:
    """Why clDice-ref is skipped at n_classes (extrapolated from smaller class counts), or ''."""
    if not measured:
        return ""
    per_class = max(peak / n for n, peak in measured)
    estimate = per_class * n_classes
    available = available_mib()
    if estimate > max_gb * 1024:
        return (f"extrapolated peak {estimate / 1024:.1f} GB > --max-reference-gb {max_gb:g} "
                "(raise it to measure)")
    if available is not None and estimate > 0.8 * available:
        return (f"extrapolated peak {estimate / 1024:.1f} GB > 80 % of the {available / 1024:.1f} GB now "
                "available")
    return ""


def _report(args: argparse.Namespace, results: dict[tuple[int, str], dict[str, Any]],
            skipped: dict[int, str]) -> None:
    rows = []
    for n_classes in args.classes:
        base = results.get((n_classes, "DC+CE"))
        for method in METHODS:
            res = results.get((n_classes, method))
            if res is None:
                rows.append([f"{n_classes}", method, "skipped", "", "", "", "", ""])
                continue
            rows.append([f"{n_classes}", method, f"{res['time_s'] * 1e3:.1f}", _n(res),
                         f"{res['peak_mib']:.1f}", f"{res['time_s'] / base['time_s']:.2f}",
                         f"{res['peak_mib'] / max(base['peak_mib'], 1e-9):.2f}", f"{res['loss']:.4f}"])
    table(f"Loss forward+backward, batch {args.batch} x {args.size}³, {args.device}, single-threaded",
           ["classes", "loss", "time ms", "n", "peak MiB", "time / DC+CE", "peak / DC+CE", "value"], rows,
           ["classes = foreground classes (output has classes + 1 channels); n = timed calls after a warm-up "
            "call (median), 1* = the warm-up call alone (over the time budget; includes first-touch page faults);",
            "peak = peak memory of one call above the level before it (separate process, fixed mmap threshold);",
            "DC+CE+SR = DC+CE + 1.0 x SoftSkeletonRecallLoss; clDice = 0.5 DC+CE + 0.5 SoftClDiceLoss "
            "(10 iterations), -ref with the straightforward soft skeleton."])
    rows = []
    for n_classes in args.classes:
        eff, ref, base = (results.get((n_classes, m)) for m in ("clDice", "clDice-ref", "DC+CE"))
        if eff is None or ref is None:
            rows.append([n_classes, "", "", "", "", skipped.get(n_classes, "not measured")])
            continue
        term = (eff["peak_mib"] - base["peak_mib"]) / max(ref["peak_mib"] - base["peak_mib"], 1e-9)
        rows.append([n_classes, f"{eff['peak_mib']:.1f}", f"{ref['peak_mib']:.1f}",
                     f"{eff['peak_mib'] / ref['peak_mib']:.3f}", f"{term:.3f}",
                     f"{eff['time_s'] / ref['time_s']:.2f}{'' if eff['n_timed'] and ref['n_timed'] else '*'}"])
    table("Memory-efficient vs straightforward soft skeleton (whole clDice loss, same inputs)",
           ["classes", "eff peak MiB", "ref peak MiB", "peak eff/ref", "(eff-DCCE)/(ref-DCCE)", "time eff/ref"],
           rows, ["target: peak eff/ref <= 0.25 at 13 classes; (eff-DCCE)/(ref-DCCE) compares the peaks above "
                  "Dice+CE's, roughly the clDice term's own share;",
                  "time eff/ref with * = at least one side is a cold first call (n = 1*), whose time includes "
                  "first-touch page faults in proportion to its peak."])
