"""GLNet benchmark: ``nnunet-ext benchmark glnet [--sizes 1024 2048 4096] [--size3d N] [--full | --quick | --smoke]``.

At the same field of view (one window W), each network configured as its planner would configure it:

* **PlainConvUNet** with nnU-Net's topology for the whole window (``planner_like_configuration(W)``: the default
  planner's pooling and kernels, 32 base features capped at 512 (2D) / 320 (3D), instance norm, leaky ReLU);
* **GLNet** (global-to-local sharing) with nnU-Net's topology for its tile ``T = W / grid``, ``tile_grid`` 4 per
  axis in 2D and 2 in 3D (what ``nnunet-ext plan --arch glnet`` chooses), ``tiles_per_batch`` 1;
* **GLNet bidirectional** (``local_to_global=True``), otherwise the same.

1. Inference as nnU-Net's predictor runs a window: eval mode, deep supervision off, ``torch.inference_mode``, one
   window: peak memory and time with ratios against PlainConvUNet, the issue's target at 2048² (GLNet's peak
   memory at most 0.25x PlainConvUNet's), and bidirectional against global-to-local only.
2. Training memory per step at one 2D size (``--train-size``, batch ``--train-batch``): ``trainer.train_step``
   (forward, the trainer's own loss, backward, SGD step) of nnUNetTrainer (PlainConvUNet on the window) and of
   nnUNetTrainerGLNet with and without ``checkpoint_tiles`` (``--train-bidirectional``: the bidirectional trainer
   too; ``--train-time``: step times too): how training bounds GLNet's memory.

Measuring (:func:`~nnunet_ext.benchmarks._measure.measured`): every case runs in fresh single-threaded
subprocesses. Memory: glibc's mmap threshold fixed at 128 KiB (:mod:`nnunet_ext.benchmarks._measure`), a call on
a half-size window first (kernels; in training the optimizer state), then the peak resident set (CUDA:
``max_memory_allocated``) of one call above the level before it: activations and the output, not the weights or
the input. Time: glibc's default allocator (the fixed threshold slows GLNet's many tile-sized temporaries 2-3x,
PlainConvUNet's few large maps hardly), ``median_within_budget`` (one call, then as many as fit in
``--time-budget``, at most ``--repeats``). ``--smoke`` runs everything in this process at tiny sizes (a test of
the code path; its memory figures are indicative only).

Sizes and duration: the issue's set is 2D 1024², 2048², 4096² and a 3D case (``--full``: 3D 128³, training
1024², hours on one CPU thread: a PlainConvUNet forward at 4096² alone takes minutes). The default is the
target's size, 2D 2048², with 3D 64³ and training at 512²: about 10 minutes on an idle 2-core machine, 20-30
under the load of other jobs (on this machine the memory worker of each GLNet at 2048² alone takes minutes). The
header prints the expected duration of the chosen sizes (convolution FLOPs of every call over this machine's
single-thread convolution speed measured at start, plus worker start-up) and what adding 1024² / 4096² would
cost. ``--quick``: 2D 256² 512², 3D 48³, training 256². Quality (Dice of global-to-local vs bidirectional) is not
measured here: ``nnunet-ext benchmark quality`` trains both.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Sequence

import torch

from nnunet_ext.benchmarks._measure import (CALIBRATION_MIB, PeakMeter, calibration_worker, measured,
                                            median_within_budget, run_worker, scratch_nnunet_folders, single_thread, timed)
from nnunet_ext.benchmarks._plans import benchmark_plans, planner_like_configuration
from nnunet_ext.benchmarks._report import package_version, print_header, table
from nnunet_ext.benchmarks.dawmr import build_trainer, half_patch, input_multiple, measure_training_step

_WORKER = "nnunet_ext.benchmarks.glnet"
GLNET = "nnunet_ext.networks.glnet.GLNet"
NUM_CLASSES = 2
#: the three networks of the inference comparison: label -> GLNet's local_to_global (None: PlainConvUNet)
NETWORKS = {"PlainConvUNet": None, "GLNet": False, "GLNet bidirectional": True}
#: training rows: label -> (trainer, GLNet, checkpoint_tiles)
TRAINING = {"nnUNetTrainer (PlainConvUNet)": ("nnUNetTrainer", False, False),
            "nnUNetTrainerGLNet": ("nnUNetTrainerGLNet", True, False),
            "nnUNetTrainerGLNet checkpoint_tiles": ("nnUNetTrainerGLNet", True, True),
            "nnUNetTrainerGLNet_bidirectional": ("nnUNetTrainerGLNet_bidirectional", True, False),
            "nnUNetTrainerGLNet_bidirectional checkpoint_tiles": ("nnUNetTrainerGLNet_bidirectional", True, True)}


# ----------------------------------------------------------------------------------------------- configurations

def plain_architecture(window: Sequence[int]) -> dict:
    """PlainConvUNet's plans architecture for the whole window (nnU-Net's topology for it)."""
    return planner_like_configuration(window, 1)["architecture"]


def glnet_architecture(window: Sequence[int], grid: int, local_to_global: bool = False,
                       checkpoint_tiles: bool = False) -> dict:
    """GLNet's plans architecture for ``window``: nnU-Net's topology for the tile ``window / grid``, plus
    ``tile_grid``, ``tiles_per_batch`` 1, ``local_to_global`` and ``checkpoint_tiles``."""
    tile = [w // grid for w in window]
    architecture = planner_like_configuration(tile, 1)["architecture"]
    kwargs = {**architecture["arch_kwargs"], "tile_grid": [grid] * len(window), "tiles_per_batch": 1,
              "local_to_global": local_to_global, "checkpoint_tiles": checkpoint_tiles}
    return {**architecture, "network_class_name": GLNET, "arch_kwargs": kwargs}


def window_problem(window: Sequence[int], grid: int) -> str | None:
    """Why ``window`` cannot be benchmarked with ``grid`` (None if it can): nnU-Net's planner must keep the window
    (for PlainConvUNet) and the tile (for GLNet) as they are."""
    if any(w % grid for w in window):
        return f"window {tuple(window)} is not divisible by the tile grid {grid}"
    tile = [w // grid for w in window]
    for name, size in (("window", list(window)), ("tile", tile)):
        planned = planner_like_configuration(size, 1)["patch_size"]
        if planned != size:
            return (f"nnU-Net's planner would change the {name} {tuple(size)} to {tuple(planned)}; use sizes whose "
                    f"{name} it keeps (e.g. powers of two)")
    return None


def build_network(architecture: dict, deep_supervision: bool = False) -> torch.nn.Module:
    """The network of a plans architecture (1 input channel, NUM_CLASSES outputs), He-initialised."""
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    torch.manual_seed(0)
    return get_network_from_plans(architecture["network_class_name"], architecture["arch_kwargs"],
                                  architecture["_kw_requires_import"], 1, NUM_CLASSES, allow_init=True,
                                  deep_supervision=deep_supervision)


def parameter_count(architecture: dict) -> int:
    """Parameters of the network (built on the meta device: no memory, no initialisation)."""
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    with torch.device("meta"):
        network = get_network_from_plans(architecture["network_class_name"], architecture["arch_kwargs"],
                                         architecture["_kw_requires_import"], 1, NUM_CLASSES, allow_init=False,
                                         deep_supervision=False)
    return sum(p.numel() for p in network.parameters())


# ------------------------------------------------------------------------------------------- duration estimate

def unet_conv_flops(arch_kwargs: dict, size: Sequence[int], in_factor: int = 1, head: bool = True,
                    input_channels: int = 1) -> float:
    """2 x multiply-adds of the convolutions of one forward of a PlainConvUNet-style U-Net on ``size`` (one
    sample; ``head``: with its 1x1 output conv); ``in_factor`` 2: every step after the first also takes a
    same-sized shared map (GLNet's branches)."""
    features, strides = arch_kwargs["features_per_stage"], arch_kwargs["strides"]
    kernels, n_stages = arch_kwargs["kernel_sizes"], arch_kwargs["n_stages"]
    voxels, shape = [], list(size)
    for stride in strides:
        shape = [s // k for s, k in zip(shape, stride)]
        voxels.append(math.prod(shape))
    macs, channels = 0, input_channels
    for s in range(n_stages):
        k = math.prod(kernels[s])
        macs += voxels[s] * k * features[s] * (channels + (arch_kwargs["n_conv_per_stage"][s] - 1) * features[s])
        channels = in_factor * features[s]
    for d in range(n_stages - 1):
        level = n_stages - 2 - d
        k = math.prod(kernels[level])
        macs += voxels[level] * in_factor * features[level + 1] * features[level]  # transposed conv, kernel = stride
        macs += voxels[level] * k * features[level] ** 2 * (2 + arch_kwargs["n_conv_per_stage_decoder"][d] - 1)
    return 2.0 * (macs + (voxels[0] * features[0] * NUM_CLASSES if head else 0))


def forward_flops(architecture: dict, window: Sequence[int]) -> float:
    """Convolution FLOPs of one inference forward (deep supervision off) of the network on ``window``: what the
    duration estimate divides by the measured speed (GLNet: global branch, every tile's local branch and the
    aggregation conv; its auxiliary heads do not run)."""
    kwargs = architecture["arch_kwargs"]
    if architecture["network_class_name"] != GLNET:
        return unet_conv_flops(kwargs, window)
    grid = kwargs["tile_grid"]
    tile = [w // g for w, g in zip(window, grid)]
    n_tiles = math.prod(grid)
    aggregation = 2.0 * math.prod(tile) * math.prod(kwargs["kernel_sizes"][0]) * 2 * kwargs["features_per_stage"][0]
    return (unet_conv_flops(kwargs, tile, 2 if kwargs["local_to_global"] else 1, head=False)
            + n_tiles * (unet_conv_flops(kwargs, tile, 2, head=False) + aggregation * NUM_CLASSES))


def case_seconds(call_s: float, repeats: int, budget: float, warmup_fraction: float, memory_slowdown: float,
                 startup_s: float, with_time: bool = True) -> float:
    """Expected seconds of one case: the memory worker (a warm-up call costing ``warmup_fraction`` of a call, one
    call ``memory_slowdown`` times slower under its allocator setting), the time worker (the first call and the
    timed ones that fit the budget) and their start-up ``startup_s`` each."""
    timed = 1 + min(repeats, int(budget / max(call_s, 1e-9))) if with_time else 0
    return call_s * (warmup_fraction + memory_slowdown + timed) + (1 + with_time) * startup_s


def throughput_gflops(dim: int) -> float:
    """Single-thread convolution speed of this machine now (GFLOP/s, best of 3): a 32->32 3x3(x3) conv."""
    conv = (torch.nn.Conv2d if dim == 2 else torch.nn.Conv3d)(32, 32, 3, padding=1)
    x = torch.randn(1, 32, *((256, 256) if dim == 2 else (40, 40, 40)))
    flops = 2.0 * x[0, 0].numel() * 32 * 32 * 3 ** dim
    with torch.inference_mode():
        conv(x)
        best = min(timed(lambda: conv(x)) for _ in range(3))
    return flops / best / 1e9


# ------------------------------------------------------------------------------------------------------- worker

def _inference(spec: dict, device: torch.device) -> dict:
    """``spec["measure"]`` "memory": a call on ``spec["warmup_window"]``, then the peak of one call on the window;
    "time": median_within_budget of calls; "both": the warm-up, then the timed calls with their peak."""
    network = build_network(spec["architecture"]).to(device).eval()
    if spec["measure"] in ("memory", "both"):
        with torch.inference_mode():
            network(torch.randn(1, 1, *spec["warmup_window"], device=device))
    x = torch.randn(1, 1, *spec["window"], generator=torch.Generator().manual_seed(0)).to(device)

    def call() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        with torch.inference_mode():
            out = network(x)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        del out
        return time.perf_counter() - start

    result: dict = {}
    meter = PeakMeter(device)
    if spec["measure"] in ("memory", "both"):
        meter.start()
    if spec["measure"] == "memory":
        call()
    else:
        result["time_s"], result["calls"] = median_within_budget(call, spec["repeats"], spec["time_budget"])
    if spec["measure"] in ("memory", "both"):
        result.update(peak_mib=meter.stop(), meter=meter.method)
    return result


def _training(spec: dict, device: torch.device) -> dict:
    plans, dataset_json, configuration = benchmark_plans(spec["window"], spec["batch"], NUM_CLASSES)
    if spec["architecture"] is not None:
        plans["configurations"][configuration]["architecture"] = spec["architecture"]
    with scratch_nnunet_folders():
        trainer = build_trainer(spec["trainer"], plans, dataset_json, configuration, device)
        result = measure_training_step(trainer, device, spec["measure"], spec["repeats"], spec["time_budget"])
    if "step_s" in result:
        result["time_s"], result["calls"] = result.pop("step_s"), result.pop("steps")
    return result


def run_case(spec: dict) -> dict:
    """One measurement: ``spec["kind"]`` "calibrate", "infer" or "train" (``spec["measure"]``: "memory", "time" or
    "both")."""
    device = torch.device(spec["device"])
    with single_thread():
        if spec["kind"] == "calibrate":
            start = time.perf_counter()
            result = {**calibration_worker(device), "gflops": {str(d): throughput_gflops(d) for d in (2, 3)}}
            return {**result, "work_s": time.perf_counter() - start}
        return _inference(spec, device) if spec["kind"] == "infer" else _training(spec, device)


def _worker(spec_json: str) -> int:
    """Subprocess entry: prints ``RESULT {json}``."""
    print("RESULT " + json.dumps(run_case(json.loads(spec_json))))
    return 0


def measure(spec: dict, in_process: bool, with_time: bool = True) -> dict:
    """Memory (and time) of a case (:func:`~nnunet_ext.benchmarks._measure.measured`: fresh workers, or here)."""
    return measured(run_case, _WORKER, spec, in_process, with_time)


# ------------------------------------------------------------------------------------------------------- report

def _edge(window: Sequence[int]) -> str:
    return f"{window[0]}{'²' if len(window) == 2 else '³'}" if len(set(window)) == 1 else "x".join(map(str, window))


def _ratio(a: dict, b: dict, key: str) -> str:
    if "error" in a or "error" in b or not b.get(key):
        return "-"
    return f"{a[key] / b[key]:.2f}x"


def _topology(architecture: dict, window: Sequence[int]) -> str:
    kwargs = architecture["arch_kwargs"]
    if architecture["network_class_name"] != GLNET:
        return f"{kwargs['n_stages']} stages on {_edge(window)}"
    grid = kwargs["tile_grid"]
    tile = [w // g for w, g in zip(window, grid)]
    return f"{kwargs['n_stages']} stages on tile {_edge(tile)}, grid {'x'.join(map(str, grid))}"


def _cases(args: argparse.Namespace) -> list[tuple[list[int], int]]:
    """(window, grid) of every inference case."""
    cases = [([edge, edge], args.grid2d) for edge in args.sizes]
    return cases + ([([args.size3d] * 3, args.grid3d)] if args.size3d else [])


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="nnunet-ext benchmark glnet", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="*", default=None,
                        help="2D window edges (default 2048; 1024 costs 1/4 of it, 4096 4x)")
    parser.add_argument("--size3d", type=int, default=None, help="3D window edge (default 64; 0 skips 3D)")
    parser.add_argument("--train-size", type=int, default=None,
                        help="2D window edge of the training-memory comparison (default 512; 0 skips it)")
    parser.add_argument("--train-batch", type=int, default=1, help="batch size of the training steps (1)")
    parser.add_argument("--train-bidirectional", action="store_true",
                        help="also train nnUNetTrainerGLNet_bidirectional, with and without checkpoint_tiles")
    parser.add_argument("--train-time", action="store_true",
                        help="also time the training steps (one more fresh trainer process per row)")
    parser.add_argument("--grid2d", type=int, default=4, help="GLNet tiles per axis in 2D (4)")
    parser.add_argument("--grid3d", type=int, default=2, help="GLNet tiles per axis in 3D (2)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per case at most (3)")
    parser.add_argument("--time-budget", type=float, default=20.0, help="seconds of timed calls per case (20)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="cpu (default) or cuda")
    parser.add_argument("--full", action="store_true",
                        help="the issue's full set: 2D 1024² 2048² 4096², 3D 128³, training 1024² with the "
                             "bidirectional rows and step times (hours on a CPU thread)")
    parser.add_argument("--quick", action="store_true", help="2D 256² 512², 3D 48³, training 256²")
    parser.add_argument("--smoke", action="store_true",
                        help="2D 64², 3D 16³, training 64², in this process (a test of the code path)")
    args = parser.parse_args(argv)
    if args.quick + args.smoke + args.full > 1:
        parser.error("--quick, --smoke and --full exclude each other")
    defaults = ([64], 16, 64) if args.smoke else ([256, 512], 48, 256) if args.quick else \
        ([1024, 2048, 4096], 128, 1024) if args.full else ([2048], 64, 512)
    args.sizes = defaults[0] if args.sizes is None else args.sizes
    args.size3d = defaults[1] if args.size3d is None else args.size3d
    args.train_size = defaults[2] if args.train_size is None else args.train_size
    args.train_bidirectional = args.train_bidirectional or args.full
    args.train_time = args.train_time or args.full or args.smoke
    if args.quick or args.smoke:
        args.repeats, args.time_budget = 1, 0.0 if args.smoke else min(args.time_budget, 5.0)
    if args.repeats < 1 or args.time_budget < 0 or args.train_batch < 1 or min(args.grid2d, args.grid3d) < 1:
        parser.error("--repeats, --train-batch and the grids must be >= 1, --time-budget >= 0")
    if not (args.sizes or args.size3d or args.train_size):
        parser.error("nothing to measure: give --sizes, --size3d or --train-size")
    checks = [([e, e], args.grid2d, "--sizes") for e in args.sizes] + \
        ([([args.size3d] * 3, args.grid3d, "--size3d")] if args.size3d else []) + \
        ([([args.train_size] * 2, args.grid2d, "--train-size")] if args.train_size else [])
    for window, grid, option in checks:
        problem = window_problem(window, grid) if min(window) > 0 else "sizes must be positive"
        if problem:
            parser.error(f"{option} {window[0]}: {problem}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available; run without it (CPU)")
    return args


def _training_rows(args: argparse.Namespace) -> dict:
    return {label: row for label, row in TRAINING.items() if args.train_bidirectional or "bidirectional" not in label}


def _network_architecture(window: list[int], grid: int, local_to_global: bool | None) -> dict:
    return plain_architecture(window) if local_to_global is None else glnet_architecture(window, grid, local_to_global)


def _expected_seconds(args: argparse.Namespace, calibration: dict, startup_s: float) -> tuple[float, dict]:
    """Expected duration of the run and, per 2D edge up to 4096 not in --sizes, what adding it would cost:
    convolution FLOPs / the measured speed (GLNet's memory worker counted 2.5x slower, as measured here), plus
    the workers' start-up (a trainer's 3x an inference worker's)."""
    if args.device == "cuda" or "gflops" not in calibration:
        return float("nan"), {}
    gflops = {int(d): v for d, v in calibration["gflops"].items()}

    def inference_s(window: list[int], grid: int) -> float:
        total = 0.0
        for local_to_global in NETWORKS.values():
            call_s = forward_flops(_network_architecture(window, grid, local_to_global), window) / (
                gflops[len(window)] * 1e9)
            total += case_seconds(call_s, args.repeats, args.time_budget, 0.5 ** len(window),
                                  1.0 if local_to_global is None else 2.5, startup_s)
        return total

    total = sum(inference_s(window, grid) for window, grid in _cases(args))
    if args.train_size:
        window = [args.train_size] * 2
        for _, is_glnet, checkpoint in _training_rows(args).values():
            architecture = glnet_architecture(window, args.grid2d) if is_glnet else plain_architecture(window)
            step_s = (3 + checkpoint) * args.train_batch * forward_flops(architecture, window) / (gflops[2] * 1e9)
            total += case_seconds(step_s, args.repeats, args.time_budget, 0.25, 2.5 if is_glnet else 1.0,
                                  3 * startup_s, args.train_time)
    extra = {edge: inference_s([edge, edge], args.grid2d) for edge in (1024, 2048, 4096) if edge not in args.sizes}
    return total, extra


def _header_lines(args: argparse.Namespace, calibration: dict, startup_s: float) -> list[str]:
    lines = [f"GPU: {torch.cuda.get_device_name()}"] if args.device == "cuda" else []
    where = "in this process (--smoke)" if args.smoke else "fresh subprocesses per case (memory, time)"
    lines += [f"device {args.device}; {where}, torch 1 thread; time: median of <= {args.repeats} calls within "
              f"{args.time_budget:.0f} s after the first; peak memory: {calibration.get('meter', '?')} (check: a "
              f"{CALIBRATION_MIB} MiB tensor measured as {calibration.get('peak_mib', float('nan')):.1f} MiB)",
              f"GLNet: nnU-Net's topology for the tile, tile_grid {args.grid2d} (2D) / {args.grid3d} (3D), "
              f"tiles_per_batch 1; PlainConvUNet: nnU-Net's topology for the whole window"]
    expected, extra = _expected_seconds(args, calibration, startup_s)
    if math.isfinite(expected):
        speed = ", ".join(f"{d}D {v:.1f}" for d, v in calibration["gflops"].items())
        more = "".join(f"; adding {e}² ~{s / 60:.0f} min" for e, s in extra.items())
        lines.append(f"expected duration ~{expected / 60:.0f} min (single-thread convolution speed now: {speed} "
                     f"GFLOP/s; worker start-up {startup_s:.0f} s){more}")
    return lines


def _run_inference(args: argparse.Namespace, base: dict) -> tuple[dict, dict]:
    results, architectures = {}, {}
    for window, grid in _cases(args):
        name = _edge(window)
        results[(name, tuple(window))] = by_network = {}
        for label, local_to_global in NETWORKS.items():
            architecture = architectures[(name, label)] = _network_architecture(window, grid, local_to_global)
            spec = {**base, "kind": "infer", "architecture": architecture, "window": window,
                    "warmup_window": half_patch(window, input_multiple(architecture["arch_kwargs"]))}
            by_network[label] = result = measure(spec, args.smoke)
            shown = result.get("error") or f"{result['time_s']:.2f} s, {result['peak_mib']:.0f} MiB"
            print(f"  inference {name} {label}: {shown}", flush=True)
    return results, architectures


def _run_training(args: argparse.Namespace, base: dict) -> dict:
    window, training = [args.train_size] * 2, {}
    for label, (trainer, is_glnet, checkpoint) in _training_rows(args).items():
        architecture = glnet_architecture(window, args.grid2d, checkpoint_tiles=checkpoint) if is_glnet else None
        spec = {**base, "kind": "train", "trainer": trainer, "architecture": architecture, "window": window,
                "batch": args.train_batch}
        training[label] = result = measure(spec, args.smoke, args.train_time)
        shown = result.get("error") or (f"{result['peak_mib']:.0f} MiB" +
                                        (f", {result['time_s']:.2f} s" if "time_s" in result else ""))
        print(f"  training {_edge(window)} {label}: {shown}", flush=True)
    return training


def _inference_tables(results: dict, architectures: dict, memory: str, grid: int) -> None:
    rows, pairs = [], []
    for (name, window), by_network in results.items():
        plain = by_network["PlainConvUNet"]
        for label, r in by_network.items():
            architecture = architectures[(name, label)]
            cells = [name, label, _topology(architecture, window), f"{parameter_count(architecture) / 1e6:.2f}"]
            if "error" in r:
                rows.append(cells + [r["error"], "", "", "", ""])
                continue
            rows.append(cells + [f"{r['time_s']:.2f}", _ratio(r, plain, "time_s"), str(r["calls"] + 1),
                                 f"{r['peak_mib']:.0f}", _ratio(r, plain, "peak_mib")])
        g2l, bi = by_network["GLNet"], by_network["GLNet bidirectional"]
        pairs.append([name, _ratio(bi, g2l, "time_s"), _ratio(bi, g2l, "peak_mib")])
    table("Inference at the same field of view (eval, deep supervision off, inference_mode, 1 window)",
          ["window", "network", "topology", "params M", "time s", "vs plain", "calls", memory, "vs plain"], rows,
          [_target_line(results, grid),
           "vs plain: ratio to PlainConvUNet's on the same window in this run; calls: the first and the timed ones"])
    table("Bidirectional (local_to_global) vs global-to-local only", ["window", "time", "memory"], pairs,
          ["bidirectional keeps every tile's local encoder maps (the global step i needs all tiles' level i-1)"])


def _training_table(training: dict, args: argparse.Namespace, memory: str) -> None:
    plain, glnet = training["nnUNetTrainer (PlainConvUNet)"], training["nnUNetTrainerGLNet"]
    header = ["trainer", memory, "vs plain", "vs GLNet"] + (["step s", "vs plain", "steps"] if args.train_time else [])
    rows = []
    for label, r in training.items():
        if "error" in r:
            rows.append([label, r["error"]] + [""] * (len(header) - 2))
            continue
        row = [label, f"{r['peak_mib']:.0f}", _ratio(r, plain, "peak_mib"), _ratio(r, glnet, "peak_mib")]
        if args.train_time:
            row += [f"{r['time_s']:.2f}", _ratio(r, plain, "time_s"), str(r["calls"] + 1)]
        rows.append(row)
    table(f"Training step at 2D {args.train_size}², batch {args.train_batch} (trainer.train_step: forward, own loss, "
          f"backward, SGD step)", header, rows,
          ["checkpoint_tiles: each tile's local branch is recomputed in backward (what nnunet-ext plan --arch glnet "
           "sets); vs GLNet: ratio to nnUNetTrainerGLNet without it",
           "memory: peak above the level before the step, which holds the weights, optimizer state and the previous "
           "step's gradients (zero_grad frees them, backward makes them again): activations and temporaries"])


def _target_line(results: dict, grid: int) -> str:
    key = next((k for k in results if k[1] == (2048, 2048)), None)
    if key is None:
        return "target (issue 12) at 2048²: GLNet's peak memory <= 0.25x PlainConvUNet's: 2048 not in --sizes"
    glnet, plain = results[key]["GLNet"], results[key]["PlainConvUNet"]
    if "error" in glnet or "error" in plain:
        return "target (issue 12) at 2048²: not measured (a case failed)"
    ratio = glnet["peak_mib"] / plain["peak_mib"]
    verdict = "met" if ratio <= 0.25 else "NOT met"
    return (f"target (issue 12) at 2048²: GLNet's peak memory <= 0.25x PlainConvUNet's: {ratio:.3f}x "
            f"({glnet['peak_mib']:.0f} / {plain['peak_mib']:.0f} MiB, grid {grid}x{grid}, tiles_per_batch 1): "
            f"{verdict}")


def main(argv: list[str]) -> int:
    """Run the benchmark; prints the tables. Returns 0."""
    args = _parse(argv)
    start = time.perf_counter()
    base = {"device": args.device, "repeats": args.repeats, "time_budget": args.time_budget}
    if args.smoke:
        calibration, startup_s = run_case({**base, "kind": "calibrate"}), 0.0
    else:
        calibration = run_worker(_WORKER, {**base, "kind": "calibrate"}, memory=True)
        startup_s = time.perf_counter() - start - calibration["work_s"]
    print_header("glnet", f"torch {torch.__version__}, nnunetv2 {package_version('nnunetv2')}",
                 _header_lines(args, calibration, startup_s))
    results, architectures = _run_inference(args, base)
    training = _run_training(args, base) if args.train_size else {}
    memory = "peak CUDA MiB" if args.device == "cuda" else "peak RSS MiB"
    if results:
        _inference_tables(results, architectures, memory, args.grid2d)
    if training:
        _training_table(training, args, memory)
    print(f"\ntotal benchmark time {time.perf_counter() - start:.0f} s")
    return 0
