"""Issue 16's checks of the Skeleton Recall target on vessel trees, as markdown (the trees kind of the quality
benchmark runs them on its generated datasets)::

    python -m nnunet_ext.benchmarks._thick_vessels --dataset Dataset900_QualityThickTrees3D_seed0 \\
        [--dataset ...] --configuration 3d_fullres --plans nnUNetPlans_cpu -o checks.md

needs ``nnUNet_raw`` and ``nnUNet_preprocessed`` (the datasets' folders). Three tables:

1. **The tube on anisotropic voxels** (:func:`tube_geometry`, on the raw training labels): the tube is the skeleton
   dilated twice with the cross, i.e. L1 radius 2 *voxels* on every axis, so 2 x spacing mm per axis. Per axis,
   through every skeleton voxel: the length of the vessel's chord (its run of label voxels along the axis) in mm,
   and the share of that chord the tube spans; the vessel's radius in mm (the label's Euclidean distance
   transform, with the spacing, at the skeleton voxels) and the tube / label volume ratio.
2. **The skeleton** (:func:`skeleton_shape`): per class, connected components (full connectivity) of the label,
   the skeleton and the tube; skeleton end points (one skeleton neighbour) and branch voxels (three or more),
   which show spurs or surface-like skeletons if the thinning went wrong on flattened (anisotropic) vessels.
3. **Every deep-supervision scale** (:func:`scale_checks`): the trainer's own validation pipeline
   (``nnUNetTrainerSkelRecall_short.get_validation_transforms`` with its deep-supervision scales) on a
   preprocessed training case cropped or padded to the plans' patch, as training sees it. Per scale: nnU-Net's
   loss weight, the share of tube voxels outside the downsampled label or of another class, the tube's and the
   label's components per class, the tube / label ratio, and the same for a tube computed afresh from the
   downsampled label (what a tube at that resolution would be).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Sequence

import cc3d
import numpy as np
from scipy import ndimage

from nnunet_ext.core.skeleton import TUBE_RADIUS, foreground_mask, skeleton_points, tubed_skeleton

N_CASES = 4


# ------------------------------------------------------------------------------------------- measures

def _components(mask: np.ndarray) -> int:
    if not mask.any():
        return 0
    return int(cc3d.connected_components(np.ascontiguousarray(mask, dtype=np.uint8),
                                         connectivity=26 if mask.ndim == 3 else 8, return_N=True)[1])


def run_lengths(mask: np.ndarray, axis: int) -> np.ndarray:
    """Same shape as ``mask`` (bool): each foreground voxel holds the length (voxels) of the run of foreground it
    belongs to along ``axis``, background 0."""
    moved = np.moveaxis(mask, axis, -1)
    lines = moved.reshape(-1, mask.shape[axis])
    steps = np.diff(np.pad(lines.astype(np.int8), ((0, 0), (1, 1))), axis=1)
    starts, ends = np.nonzero(steps == 1), np.nonzero(steps == -1)
    lengths = np.zeros(lines.shape, np.int32)
    run = ends[1] - starts[1]
    if len(run):
        rows = np.repeat(starts[0], run)
        columns = np.concatenate([np.arange(a, b) for a, b in zip(starts[1], ends[1])])
        lengths[rows, columns] = np.repeat(run, run)
    return np.moveaxis(lengths.reshape(moved.shape), -1, axis)


def tube_geometry(label: np.ndarray, spacing: Sequence[float]) -> dict:
    """Figures of one label map's tube (table 1), per axis a through the skeleton voxels: ``chord_vox_a`` /
    ``chord_mm_a`` the mean length of the label's run along a, ``tube_share_a`` the mean share of it the tube's run
    spans, ``tube_radius_mm_a`` = 2 voxels in mm; ``radius_mm`` (EDT at the skeleton), ``tube_share`` (volume)."""
    fg = foreground_mask(label)
    tube = tubed_skeleton(label) > 0
    points = tuple(skeleton_points(fg).T)
    distance = ndimage.distance_transform_edt(fg, sampling=spacing)
    figures = {"radius_mm": float(distance[points].mean()) if len(points[0]) else math.nan,
               "tube_share": float(tube.sum() / max(1, fg.sum()))}
    for axis in range(label.ndim):
        chords = run_lengths(fg, axis)[points].astype(float)
        spans = run_lengths(tube & fg, axis)[points].astype(float)
        figures[f"chord_vox_{axis}"] = float(chords.mean()) if chords.size else math.nan
        figures[f"chord_mm_{axis}"] = figures[f"chord_vox_{axis}"] * spacing[axis]
        figures[f"tube_share_{axis}"] = float((spans / chords).mean()) if chords.size else math.nan
        figures[f"tube_radius_mm_{axis}"] = TUBE_RADIUS * spacing[axis]
    return figures


def skeleton_shape(label: np.ndarray, cls: int) -> dict:
    """Table 2 for class ``cls``: components of label, skeleton and tube; skeleton end points and branch voxels."""
    mask = label == cls
    skeleton = np.zeros(label.shape, bool)
    points = skeleton_points(mask)
    skeleton[tuple(points.T)] = True
    kernel = np.ones((3,) * label.ndim)
    neighbours = ndimage.convolve(skeleton.astype(np.int16), kernel, mode="constant") - 1
    tube = tubed_skeleton(mask.view(np.uint8)) > 0
    return {"label_components": _components(mask), "skeleton_components": _components(skeleton),
            "tube_components": _components(tube), "skeleton_voxels": int(skeleton.sum()),
            "end_points": int((skeleton & (neighbours == 1)).sum()),
            "branch_voxels": int((skeleton & (neighbours >= 3)).sum())}


def scale_figures(segmentation: np.ndarray, tube: np.ndarray, labels: Sequence[int]) -> dict:
    """Table 3 for one scale: segmentation and its (downsampled) tube channel, both (*spatial) label maps."""
    inside = tube > 0
    fresh = tubed_skeleton(segmentation.astype(np.uint8))
    figures = {"shape": list(segmentation.shape), "label_voxels": int((segmentation > 0).sum()),
               "tube_voxels": int(inside.sum()),
               "outside_label": float((inside & (segmentation == 0)).sum() / max(1, inside.sum())),
               "other_class": float((inside & (segmentation > 0) & (segmentation != tube)).sum()
                                    / max(1, inside.sum())),
               "tube_share": float(inside.sum() / max(1, (segmentation > 0).sum())),
               "fresh_tube_share": float((fresh > 0).sum() / max(1, (segmentation > 0).sum())),
               "fresh_covered": float(((fresh > 0) & inside).sum() / max(1, (fresh > 0).sum()))}
    for cls in labels:
        figures[f"label_components_{cls}"] = _components(segmentation == cls)
        figures[f"tube_components_{cls}"] = _components(tube == cls)
        figures[f"fresh_tube_components_{cls}"] = _components(fresh == cls)
    return figures


def deep_supervision_weights(n_scales: int) -> list[float]:
    """nnU-Net's loss weights of the scales (1 / 2^i, the lowest 0, normalised; nnUNetTrainer._build_loss)."""
    weights = np.array([1 / 2 ** i for i in range(n_scales)])
    if n_scales > 1:
        weights[-1] = 0
    return (weights / weights.sum()).tolist()


# ------------------------------------------------------------------------------------------- data

def _read(path: Path) -> tuple[np.ndarray, tuple[float, ...]]:
    import SimpleITK as sitk
    image = sitk.ReadImage(str(path))
    return sitk.GetArrayFromImage(image), tuple(image.GetSpacing()[::-1])


def raw_labels(dataset: str, n: int = N_CASES) -> list[tuple[str, np.ndarray, tuple[float, ...]]]:
    folder = Path(os.environ["nnUNet_raw"]) / dataset / "labelsTr"
    files = sorted(p for p in folder.iterdir() if p.name.endswith(".nii.gz"))[:n]
    return [(p.name, *_read(p)) for p in files]


def _fit(array: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Centre crop / zero pad the trailing axes of ``array`` to ``shape``."""
    out = np.zeros(array.shape[:-len(shape)] + tuple(shape), array.dtype)
    source, target = [], []
    for have, want in zip(array.shape[-len(shape):], shape):
        if have >= want:
            start = (have - want) // 2
            source.append(slice(start, start + want))
            target.append(slice(0, want))
        else:
            start = (want - have) // 2
            source.append(slice(0, have))
            target.append(slice(start, start + have))
    lead = (slice(None),) * (array.ndim - len(shape))
    out[lead + tuple(target)] = array[lead + tuple(source)]
    return out


def scale_rows(trainer, cases: Sequence[tuple[np.ndarray, np.ndarray]]) -> list[dict]:
    """Table 3 per deep-supervision scale of ``trainer`` (a Skeleton Recall trainer, not initialised): its own
    validation pipeline on ``cases`` ((data (C, *patch), seg (1, *patch)) pairs at the plans' patch); figures are
    the mean over the cases."""
    import torch
    manager = trainer.label_manager
    scales = trainer._get_deep_supervision_scales()
    pipeline = trainer.get_validation_transforms(scales, is_cascaded=False,
                                                 foreground_labels=manager.foreground_labels, regions=None,
                                                 ignore_label=manager.ignore_label)
    per_scale: list[list[dict]] = [[] for _ in scales]
    for data, seg in cases:
        out = pipeline(image=torch.from_numpy(np.asarray(data, np.float32)),
                       segmentation=torch.from_numpy(np.asarray(seg).astype(np.int16)))
        for index, target in enumerate(out["segmentation"]):
            target = target.numpy()
            per_scale[index].append(scale_figures(target[0], target[1], manager.foreground_labels))
    weights = deep_supervision_weights(len(scales))
    rows = []
    for index, figures in enumerate(per_scale):
        row = {"scale": [float(s) for s in scales[index]], "weight": weights[index], "shape": figures[0]["shape"]}
        for key in figures[0]:
            if key != "shape":
                row[key] = float(np.mean([f[key] for f in figures]))
        rows.append(row)
    return rows


def scale_checks(dataset: str, configuration: str, plans_name: str, n: int = 2) -> list[dict]:
    """:func:`scale_rows` of ``nnUNetTrainerSkelRecall_short`` on the dataset's plans and its first ``n``
    preprocessed training cases, each centre-cropped / zero-padded to the plans' patch."""
    import torch
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

    from nnunet_ext.trainers import nnUNetTrainerSkelRecall_short

    folder = Path(os.environ["nnUNet_preprocessed"]) / dataset
    plans = json.loads((folder / f"{plans_name}.json").read_text())
    plans["continue_training"] = False  # nnU-Net 2.8's run_training puts this key in; the trainer pops it
    dataset_json = json.loads((folder / "dataset.json").read_text())
    trainer = nnUNetTrainerSkelRecall_short(plans, configuration, 0, dataset_json, device=torch.device("cpu"))
    data_folder = folder / trainer.configuration_manager.data_identifier
    cases = infer_dataset_class(str(data_folder))(str(data_folder))
    patch = tuple(trainer.configuration_manager.patch_size)
    loaded = []
    for identifier in sorted(cases.identifiers)[:n]:
        data, seg, _, _ = cases.load_case(identifier)
        loaded.append((_fit(np.asarray(data), patch), _fit(np.asarray(seg), patch)))
    return scale_rows(trainer, loaded)


# ------------------------------------------------------------------------------------------- markdown

def _mean_of(dicts: list[dict], key: str) -> float:
    return float(np.mean([d[key] for d in dicts]))


def markdown(datasets: Sequence[str], configuration: str, plans_name: str) -> str:
    lines = ["## Skeleton Recall's tube on these trees (issue 16)", ""]
    geometry_rows, skeleton_rows, spacing = [], [], None
    for dataset in datasets:
        cases = raw_labels(dataset)
        spacing = cases[0][2]
        figures = [tube_geometry(label, sp) for _, label, sp in cases]
        name = dataset.split("_", 1)[1]
        row = [f"`{name}`", " x ".join(f"{s:g}" for s in spacing), f"{_mean_of(figures, 'radius_mm'):.2f}",
               " / ".join(f"{TUBE_RADIUS * s:g}" for s in spacing), f"{_mean_of(figures, 'tube_share'):.2f}"]
        for axis in range(len(spacing)):
            row.append(f"{_mean_of(figures, f'chord_mm_{axis}'):.1f} mm, {_mean_of(figures, f'tube_share_{axis}'):.2f}")
        geometry_rows.append(row)
        labels = sorted({int(v) for _, label, _ in cases for v in np.unique(label)} - {0})
        for cls in labels:
            shapes = [skeleton_shape(label, cls) for _, label, _ in cases]
            skeleton_rows.append([f"`{name}`", str(cls)] + [f"{_mean_of(shapes, key):.2f}" for key in
                                                           ("label_components", "skeleton_components",
                                                            "tube_components", "skeleton_voxels", "end_points",
                                                            "branch_voxels")])
    dims = len(spacing)
    lines += [f"Training labels ({N_CASES} cases per dataset, mean). The tube is L1 radius {TUBE_RADIUS} voxels on every "
              "axis, so its reach in mm differs per axis; chord = the vessel's extent along that axis through a "
              "skeleton voxel (mean), tube share = the mean share of that chord the tube spans.", "",
              _table(["dataset", "spacing (mm)", "vessel radius (mm, EDT at skeleton)",
                      "tube radius per axis (mm)", "tube / label voxels"]
                     + [f"axis {a}: chord, tube share" for a in range(dims)], geometry_rows), "",
              "Per class (mean over the cases): connected components (full connectivity) of the label, its skeleton "
              "and its tube; skeleton end points (one skeleton neighbour) and branch voxels (three or more).", "",
              _table(["dataset", "class", "label comp.", "skeleton comp.", "tube comp.", "skeleton voxels",
                      "end points", "branch voxels"], skeleton_rows)]
    for dataset in datasets:
        rows = scale_checks(dataset, configuration, plans_name)
        labels = sorted(int(k.rsplit("_", 1)[1]) for k in rows[0] if k.startswith("label_components_"))
        body = []
        for row in rows:
            body.append(["x".join(f"{s:g}" for s in row["scale"]), "x".join(map(str, row["shape"])),
                         f"{row['weight']:.3f}", f"{row['outside_label']:.3f}", f"{row['other_class']:.3f}",
                         f"{row['tube_share']:.2f}", f"{row['fresh_tube_share']:.2f}", f"{row['fresh_covered']:.2f}"]
                        + [f"{row[f'label_components_{c}']:.1f} / {row[f'tube_components_{c}']:.1f} / "
                           f"{row[f'fresh_tube_components_{c}']:.1f}" for c in labels])
        lines += ["", f"Every deep-supervision scale of `{dataset.split('_', 1)[1]}` ({plans_name}, {configuration}): "
                  "the targets `nnUNetTrainerSkelRecall_short`'s own validation pipeline makes from a preprocessed "
                  "training case at the plans' patch (mean of 2 cases). outside / other class: share of tube voxels on "
                  "downsampled background / another class; tube share: tube / label voxels; fresh: a tube computed "
                  "from the downsampled label itself; covered: share of the fresh tube inside the downsampled tube; "
                  "components: label / downsampled tube / fresh tube.", "",
                  _table(["scale", "shape", "loss weight", "outside label", "other class", "tube share",
                          "fresh tube share", "fresh covered"] + [f"class {c} components" for c in labels], body)]
    return "\n".join(lines) + "\n"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join([":---"] + ["---:"] * (len(header) - 1)) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nnunet_ext.benchmarks._thick_vessels", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", action="append", required=True, help="DatasetXXX_Name (repeatable)")
    parser.add_argument("--configuration", default="3d_fullres")
    parser.add_argument("--plans", default="nnUNetPlans")
    parser.add_argument("-o", dest="output", type=Path, required=True)
    args = parser.parse_args(argv)
    missing = [name for name in ("nnUNet_raw", "nnUNet_preprocessed") if not os.environ.get(name)]
    if missing:
        print(f"_thick_vessels: set {' and '.join(missing)}", file=sys.stderr)
        return 2
    args.output.write_text(markdown(args.dataset, args.configuration, args.plans))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
