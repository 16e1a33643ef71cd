"""UNet++ benchmark: ``nnunet-ext benchmark unetpp [--quick] [--plans FILE -c CONFIG] [--device cuda]``.

On the same plans (nnU-Net's topology for a patch: ``get_pool_and_conv_props``, 32 base features, capped at
512 in 2D and 320 in 3D, two convs per stage, instance norm, leaky ReLU; or a real plans file's configuration):

1. Training step, UNet++ vs PlainConvUNet: parameters, forward + backward time and peak memory with deep
   supervision on and each trainer's loss (nnU-Net's Dice+CE over downsampled targets with nnU-Net's weights for
   PlainConvUNet; :class:`~nnunet_ext.losses.deep_supervision.FullResolutionDeepSupervision` over the
   full-resolution heads for UNet++), plus the ratio of nnU-Net's planning estimate
   (``compute_conv_feature_map_size``) for comparison with the measured memory ratio. Peak memory is the
   activations' (and temporaries'): weights and gradient buffers exist before the measured call.
2. Pruning: inference (deep supervision off, ``torch.no_grad``, one patch) of the pruned UNet++ L^1 .. L^n
   and of the ensemble of all heads: parameters used, time and peak memory, with ratios against the ensemble;
   PlainConvUNet's inference as a reference row.

Defaults: 2D 2 x 256² (7 stages) and 3D 2 x 64³ (5 stages) training steps, inference on 1 patch; ``--quick``
halves the edges. Every case runs in fresh single-threaded subprocesses (one for memory, one for time; see
:mod:`nnunet_ext.benchmarks._measure`); time is the median of up to ``--repeats`` calls after one warm-up call.
A default run takes about 5 minutes on a 2-core CPU.
"""
from __future__ import annotations

import argparse
import json
import time
from typing import Any

import numpy as np
import torch

from nnunet_ext.benchmarks._measure import (CALIBRATION_MIB, PeakMeter, calibration_worker, median_within_budget,
                                            run_worker)
from nnunet_ext.benchmarks._plans import planner_like_configuration
from nnunet_ext.benchmarks._report import package_version, print_header, table

_WORKER = "nnunet_ext.benchmarks.unetpp"


# ----------------------------------------------------------------------------------------------- configurations

def configuration_from_plans(path: str, name: str) -> dict:
    """A configuration of a plans file (following ``inherits_from``), checked to name a PlainConvUNet-like net."""
    with open(path) as f:
        plans = json.load(f)
    configurations = plans["configurations"]
    if name not in configurations:
        raise SystemExit(f"configuration {name!r} is not in {path}; it has: {', '.join(configurations)}")
    merged: dict = {}
    chain = [name]
    while "inherits_from" in configurations[chain[-1]]:
        chain.append(configurations[chain[-1]]["inherits_from"])
    for link in reversed(chain):
        merged.update(configurations[link])
    network = merged["architecture"]["network_class_name"].rsplit(".", 1)[-1]
    if network not in ("PlainConvUNet", "UNetPlusPlus"):
        raise SystemExit(f"{path} {name} names {network}; the comparison needs PlainConvUNet (or UNet++) plans")
    return merged


def build_network(kind: str, configuration: dict, deep_supervision: bool, num_classes: int = 2) -> torch.nn.Module:
    """``kind`` "plain" (PlainConvUNet) or "unetpp", from a configuration's architecture (1 input channel)."""
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    name = ("dynamic_network_architectures.architectures.unet.PlainConvUNet" if kind == "plain"
            else "nnunet_ext.networks.unet_plus_plus.UNetPlusPlus")
    arch = configuration["architecture"]
    torch.manual_seed(0)
    return get_network_from_plans(name, arch["arch_kwargs"], arch["_kw_requires_import"], 1, num_classes,
                                  allow_init=True, deep_supervision=deep_supervision)


def pruned_parameter_count(network: torch.nn.Module, depth: int) -> int:
    """Parameters of the sub-network a pruned UNet++ L^depth computes: encoder stages 0..depth, the nodes
    X[i, j] with i + j <= depth (and their up-convolutions), and head ``depth``."""
    def used(name: str) -> bool:
        parts = name.split(".")
        if parts[0] == "encoder":
            return int(parts[2]) <= depth
        if parts[1] == "heads":
            return int(parts[2]) == depth - 1
        level, column = (int(v) for v in parts[2][1:].split("_"))
        return level + column <= depth
    return sum(p.numel() for name, p in network.named_parameters() if used(name))


# ------------------------------------------------------------------------------------------------------- worker

def _training_loss(kind: str, configuration: dict):
    """The trainer's loss for ``kind`` and the targets it reads: (loss, targets)."""
    from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
    from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
    from nnunet_ext.losses.deep_supervision import FullResolutionDeepSupervision
    strides = np.array(configuration["architecture"]["arch_kwargs"]["strides"])
    base = DC_and_CE_loss({"batch_dice": False, "smooth": 1e-5, "do_bg": False, "ddp": False}, {}, weight_ce=1,
                          weight_dice=1)
    shape = [configuration["batch_size"], 1, *configuration["patch_size"]]
    target = (torch.rand(shape, generator=torch.Generator().manual_seed(1)) > 0.7).float()
    if kind == "unetpp":
        n_outputs = len(strides)
        return FullResolutionDeepSupervision(base, [1 / n_outputs] * n_outputs), [target]
    factors = np.cumprod(strides, axis=0)[:-1]
    weights = np.array([1 / 2 ** i for i in range(len(factors))])
    weights[-1] = 0
    targets = [target[(..., *[slice(None, None, int(f)) for f in fac])] for fac in factors]
    return DeepSupervisionWrapper(base, weights / weights.sum()), targets


def _worker(spec_json: str) -> int:
    """Subprocess entry: one (network, mode) case; prints ``RESULT {json}``."""
    spec = json.loads(spec_json)
    torch.set_num_threads(1)
    device = torch.device(spec["device"])
    if spec["kind"] == "calibrate":
        print("RESULT " + json.dumps(calibration_worker(device)))
        return 0
    configuration = spec["configuration"]
    training = spec["mode"] == "train"
    network = build_network(spec["kind"], configuration, deep_supervision=training).to(device)
    batch = configuration["batch_size"] if training else 1
    x = torch.randn(batch, 1, *configuration["patch_size"], generator=torch.Generator().manual_seed(0)).to(device)
    if training:
        loss_fn, targets = _training_loss(spec["kind"], configuration)
        targets = [t.to(device) for t in targets]
    else:
        network.eval()
        if spec["kind"] == "unetpp":
            network.inference_head = spec["head"]

    def call() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        if training:
            loss_fn(network(x), targets).backward()
        else:
            with torch.no_grad():
                network(x)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    if spec["measure"] == "memory":
        call()  # warm-up: kernels, allocator, and the gradient buffers (kept: memory counts activations)
        meter = PeakMeter(device)
        meter.start()
        call()
        print("RESULT " + json.dumps({"peak_mib": meter.stop(), "meter": meter.method}))
        return 0
    time_s, _ = median_within_budget(call, spec["repeats"], spec["time_budget"])
    print("RESULT " + json.dumps({"time_s": time_s}))
    return 0


def _measure(spec: dict) -> dict[str, Any]:
    return {**run_worker(_WORKER, {**spec, "measure": "memory"}, memory=True),
            **run_worker(_WORKER, {**spec, "measure": "time"}, memory=False)}


# ------------------------------------------------------------------------------------------------------- report

def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "-"


def _compare_training(name: str, configuration: dict, base: dict) -> list[object]:
    plain = build_network("plain", configuration, True)
    nested = build_network("unetpp", configuration, True)
    patch = tuple(configuration["patch_size"])
    n_plain, n_nested = (sum(p.numel() for p in n.parameters()) for n in (plain, nested))
    estimate = nested.compute_conv_feature_map_size(patch) / plain.compute_conv_feature_map_size(patch)
    results = {kind: _measure({**base, "kind": kind, "mode": "train", "configuration": configuration})
               for kind in ("plain", "unetpp")}
    p, u = results["plain"], results["unetpp"]
    print(f"  {name}: PlainConvUNet {p['time_s'] * 1e3:.0f} ms {p['peak_mib']:.0f} MiB, "
          f"UNet++ {u['time_s'] * 1e3:.0f} ms {u['peak_mib']:.0f} MiB", flush=True)
    return [name, f"{n_plain / 1e6:.2f} / {n_nested / 1e6:.2f}", _ratio(n_nested, n_plain),
            f"{p['time_s'] * 1e3:.0f} / {u['time_s'] * 1e3:.0f}", _ratio(u["time_s"], p["time_s"]),
            f"{p['peak_mib']:.0f} / {u['peak_mib']:.0f}", _ratio(u["peak_mib"], p["peak_mib"]), f"{estimate:.2f}x"]


def _pruning_rows(name: str, configuration: dict, base: dict) -> list[list[object]]:
    nested = build_network("unetpp", configuration, False)
    n_heads = nested.decoder.depth
    total = sum(p.numel() for p in nested.parameters())
    spec = {**base, "mode": "infer", "configuration": configuration}
    ensemble = _measure({**spec, "kind": "unetpp", "head": "ensemble"})
    rows = []
    for head in [*range(1, n_heads + 1), "ensemble", "plain"]:
        if head == "ensemble":
            result, params, label = ensemble, total, "ensemble (all heads)"
        elif head == "plain":
            plain = build_network("plain", configuration, False)
            result, params = _measure({**spec, "kind": "plain"}), sum(p.numel() for p in plain.parameters())
            label = "PlainConvUNet"
        else:
            result = _measure({**spec, "kind": "unetpp", "head": head})
            params, label = pruned_parameter_count(nested, head), f"L{head}"
        print(f"  {name} {label}: {result['time_s'] * 1e3:.1f} ms, {result['peak_mib']:.0f} MiB", flush=True)
        rows.append([f"{name} {label}", f"{params / 1e6:.3f}", _ratio(params, total),
                     f"{result['time_s'] * 1e3:.1f}", _ratio(result["time_s"], ensemble["time_s"]),
                     f"{result['peak_mib']:.0f}", _ratio(result["peak_mib"], ensemble["peak_mib"])])
    return rows


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="nnunet-ext benchmark unetpp", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2D 128², 3D 32³, one timed call")
    parser.add_argument("--plans", default=None, help="a plans .json: benchmark its configuration -c instead")
    parser.add_argument("-c", dest="configuration", default=None, help="configuration of --plans (e.g. 3d_fullres)")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per case at most (3, --quick 1)")
    parser.add_argument("--time-budget", type=float, default=10.0, help="seconds of timed calls per case (10)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="cpu (default) or cuda")
    args = parser.parse_args(argv)
    if (args.plans is None) != (args.configuration is None):
        parser.error("--plans and -c go together")
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3
    if args.repeats < 1 or args.time_budget <= 0:
        parser.error("--repeats must be >= 1 and --time-budget > 0")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available; run without it (CPU)")
    return args


def _configurations(args: argparse.Namespace) -> dict[str, dict]:
    if args.plans:
        return {args.configuration: configuration_from_plans(args.plans, args.configuration)}
    edge2, edge3 = (128, 32) if args.quick else (256, 64)
    return {f"2D {edge2}²": planner_like_configuration((edge2, edge2), 2),
            f"3D {edge3}³": planner_like_configuration((edge3,) * 3, 2)}


def main(argv: list[str]) -> int:
    """Run the benchmark; prints the tables. Returns 0."""
    args = _parse(argv)
    start = time.perf_counter()
    base = {"device": args.device, "repeats": args.repeats, "time_budget": args.time_budget}
    calibration = run_worker(_WORKER, {**base, "kind": "calibrate"}, memory=True)
    configurations = _configurations(args)
    lines = [f"GPU: {torch.cuda.get_device_name()}"] if args.device == "cuda" else []
    lines += [f"device {args.device}; fresh subprocesses per case, torch 1 thread; time: median of <= "
              f"{args.repeats} calls after a warm-up; peak memory: {calibration['meter']} (check: a "
              f"{CALIBRATION_MIB} MiB tensor measured as {calibration['peak_mib']:.1f} MiB)"]
    lines += [f"{name}: patch {c['patch_size']}, batch {c['batch_size']}, "
              f"{c['architecture']['arch_kwargs']['n_stages']} stages" for name, c in configurations.items()]
    print_header("unetpp", f"torch {torch.__version__}, nnunetv2 {package_version('nnunetv2')}", lines)
    training, pruning = [], []
    for name, configuration in configurations.items():
        training.append(_compare_training(name, configuration, base))
        pruning.extend(_pruning_rows(name, configuration, base))
    table("Training step (forward + backward, deep supervision on, trainer's loss): PlainConvUNet / UNet++",
          ["plans", "params M", "ratio", "time ms", "ratio", "peak MiB", "ratio", "planner estimate ratio"],
          training, ["planner estimate ratio: UNet++ / PlainConvUNet compute_conv_feature_map_size (what nnU-Net's "
                     "planner fits to the VRAM target)"])
    table("Inference (deep supervision off, no_grad, 1 patch): pruned UNet++ L^d vs the ensemble of all heads",
          ["network", "params M", "vs ensemble", "time ms", "vs ensemble", "peak MiB", "vs ensemble"], pruning,
          ["L^d: only encoder stages 0..d, the nodes under head d and head d are computed "
           "(NNUNET_EXT_UNETPP_INFERENCE_HEAD=d at nnUNetv2_predict)"])
    print(f"\ntotal benchmark time {time.perf_counter() - start:.0f} s")
    return 0
