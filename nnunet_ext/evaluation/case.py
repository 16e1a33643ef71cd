"""Every metric family of one case: a predicted and a reference label map, per label/region.

Families (:data:`FAMILIES`; :data:`DEFAULT_FAMILIES` are on unless chosen otherwise)
    - ``dice``: ``Dice`` = 2 TP / (2 TP + FP + FN), nnU-Net's definition (voxels of the ignore label excluded;
      NaN when both masks are empty);
    - ``cldice``: ``clDice`` per label/region (:func:`nnunet_ext.evaluation.topology.cldice`); with
      ``convention="topcow"`` instead one ``clDice_TopCoW`` per case on the merged foreground
      (:func:`nnunet_ext.evaluation.conventions.cldice_topcow`), stored under the region of all evaluated labels;
    - ``betti``: ``Betti0_error``, ``Betti1_error`` (and ``Betti2_error`` in 3D) at ``connectivity``
      (:func:`nnunet_ext.evaluation.conventions.betti_errors`);
    - ``surface``: ``HD95``, ``HD``, ``ASSD`` (mm) and ``NSD`` at ``nsd_tolerance`` mm, with the voxel spacing
      (:func:`nnunet_ext.evaluation.surface.surface_metrics`);
    - ``components``: ``Comp_*`` detection counts and scores, components matched one-to-one at IoU >=
      ``iou_threshold`` (:func:`nnunet_ext.evaluation.components.component_metrics`);
    - ``instance``: ``ARE``, ``ARE_precision``, ``ARE_recall``, ``VI``, ``VI_split``, ``VI_merge`` between the
      connected components of prediction and reference, or the given reference instances
      (:func:`nnunet_ext.evaluation.instances.instance_metrics`), for ``instance_labels`` (default: every
      evaluated label/region; 0 = the regions between the membranes of a membrane task).

Ignore label: voxels where the reference holds ``ignore_label`` are excluded from Dice (nnU-Net) and set to
background in both masks for every other family.

Conventions
    ``"default"``: the rules of the modules above. ``"topcow"``: TopCoW's rules where they differ: clDice on the
    merged foreground (3D Lee thinning also for a 3D file with a length-1 axis; a component without skeleton
    adds nothing; 0 when both masks are empty); HD95 and HD of a label present in only one mask = 90 mm
    (TopCoW's ``HD95_UPPER_BOUND``) instead of the image diagonal; and a label present in neither mask gets no
    Betti errors (NaN, skipped by means; TopCoW scores only the labels present in either mask). The summary's
    ``foreground_mean`` then follows TopCoW too (see :mod:`nnunet_ext.evaluation.summary`).
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Hashable, Sequence

import numpy as np

from nnunet_ext.evaluation.components import component_metrics
from nnunet_ext.evaluation.conventions import betti_errors, cldice_topcow, resolve_connectivity
from nnunet_ext.evaluation.instances import instance_metrics
from nnunet_ext.evaluation.surface import surface_metrics
from nnunet_ext.evaluation.topology import cldice

FAMILIES = ("dice", "cldice", "betti", "surface", "components", "instance")
DEFAULT_FAMILIES = ("dice", "cldice", "betti", "surface", "components")
CONVENTIONS = ("default", "topcow")
#: TopCoW's value (mm) of HD95 and HD for a label present in only one of the two masks
TOPCOW_MISSING_DISTANCE_MM = 90.0

LabelKey = Hashable  # an int label or a tuple of labels (a region)


def as_key(label_or_region) -> LabelKey:
    """1 -> 1; [1, 2] -> (1, 2) (hashable, as nnU-Net's summary keys)."""
    if isinstance(label_or_region, (list, tuple, np.ndarray)):
        return tuple(int(i) for i in label_or_region)
    return int(label_or_region)


@dataclass(frozen=True)
class EvaluationSettings:
    """What to compute and under which rules (see the module docstring); validated on construction."""
    families: tuple[str, ...] = DEFAULT_FAMILIES
    convention: str = "default"
    connectivity: str | int = "full"
    nsd_tolerance: float = 1.0
    iou_threshold: float = 0.5
    instance_labels: tuple[LabelKey, ...] | None = None

    def __post_init__(self):
        families = tuple(dict.fromkeys(str(f).lower() for f in self.families))
        unknown = [f for f in families if f not in FAMILIES]
        if unknown or not families:
            raise ValueError(f"unknown metric families {unknown or '(none given)'}: choose from {', '.join(FAMILIES)}")
        object.__setattr__(self, "families", tuple(f for f in FAMILIES if f in families))
        if self.convention not in CONVENTIONS:
            raise ValueError(f"convention must be one of {', '.join(CONVENTIONS)}, got {self.convention!r}")
        connectivity = self.connectivity
        if isinstance(connectivity, str) and connectivity.strip().isdigit():
            connectivity = int(connectivity)
        if isinstance(connectivity, str):
            connectivity = connectivity.lower()
        if connectivity not in ("full", "face", 4, 8, 6, 26):
            raise ValueError(f"connectivity must be 'full', 'face', 4, 8 (2D) or 6, 26 (3D), got {self.connectivity!r}")
        object.__setattr__(self, "connectivity", connectivity)
        if not (isinstance(self.nsd_tolerance, (int, float)) and math.isfinite(self.nsd_tolerance)
                and self.nsd_tolerance >= 0):
            raise ValueError(f"the NSD tolerance must be a finite number of mm >= 0, got {self.nsd_tolerance!r}")
        if not 0 < self.iou_threshold <= 1:
            raise ValueError(f"the component IoU threshold must be in (0, 1], got {self.iou_threshold!r}")
        if self.instance_labels is not None:
            object.__setattr__(self, "instance_labels", tuple(as_key(k) for k in self.instance_labels))

    @property
    def empty_distance(self) -> str | float:
        """HD95/HD/ASSD of a label present in one mask only: the image diagonal, or TopCoW's 90 mm."""
        return TOPCOW_MISSING_DISTANCE_MM if self.convention == "topcow" else "diagonal"

    def to_json(self) -> dict:
        """The settings as written into the summary JSON (``"settings"``), so that results can be compared."""
        data = asdict(self)
        data["families"] = list(self.families)
        data["nsd_tolerance_mm"] = data.pop("nsd_tolerance")
        data["instance_labels"] = None if self.instance_labels is None else [str(k) for k in self.instance_labels]
        data["empty_distance"] = self.empty_distance
        return data


def _mask(seg: np.ndarray, key: LabelKey) -> np.ndarray:
    if isinstance(key, tuple):
        return np.isin(seg, key)
    return seg == key


def merged_key(labels: Sequence[LabelKey]) -> LabelKey:
    """The region of every label in ``labels`` except 0 (an int if there is only one)."""
    values = sorted({v for k in labels for v in (k if isinstance(k, tuple) else (k,)) if v != 0})
    if not values:
        raise ValueError("the TopCoW convention merges the evaluated foreground labels, but none is > 0")
    return values[0] if len(values) == 1 else tuple(values)


class _Timer:
    def __init__(self, seconds: dict[str, float] | None):
        self.seconds = seconds

    def __call__(self, family: str, function, *args, **kwargs):
        if self.seconds is None:
            return function(*args, **kwargs)
        start = time.perf_counter()
        out = function(*args, **kwargs)
        self.seconds[family] = self.seconds.get(family, 0.0) + time.perf_counter() - start
        return out


def case_metrics(pred: np.ndarray, ref: np.ndarray, labels: Sequence[LabelKey],
                 settings: EvaluationSettings = EvaluationSettings(), spacing: Sequence[float] | None = None,
                 ignore_label: int | None = None, ref_instances: np.ndarray | None = None,
                 seconds: dict[str, float] | None = None) -> dict[LabelKey, dict[str, float]]:
    """Metrics per label/region of one case: ``{key: {metric: value}}`` (keys as :func:`as_key`).

    ``pred``/``ref``: label maps of equal 2D or 3D shape without channel axis. ``spacing``: mm per axis (default
    1). ``ref_instances``: reference instance ids, same shape (for the ``instance`` family). ``seconds``: if
    given, the time spent per family is added to it (the benchmark's figures).
    """
    pred, ref = np.asarray(pred), np.asarray(ref)
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from reference shape {ref.shape}: predictions must "
                         "be on the reference grid.")
    if pred.ndim not in (2, 3):
        raise ValueError(f"case_metrics takes 2D or 3D label maps without a channel axis, got shape {pred.shape}")
    resolve_connectivity(settings.connectivity, max(2, sum(n > 1 for n in pred.shape)))  # a clear error up front
    if ref_instances is not None:
        ref_instances = np.asarray(ref_instances)
        if ref_instances.shape != ref.shape:
            raise ValueError(f"reference instances of shape {ref_instances.shape} differ from the reference "
                             f"{ref.shape}")
        if ref_instances.dtype.kind == "f":  # nnU-Net's readers return float32
            if (ref_instances % 1).any():
                raise ValueError("reference instance maps must hold integer ids")
            ref_instances = ref_instances.astype(np.int64)
    timer = _Timer(seconds)
    families = set(settings.families)
    topcow = settings.convention == "topcow"
    keys = [as_key(k) for k in labels]
    instance_keys = [] if "instance" not in families else (
        keys if settings.instance_labels is None else list(settings.instance_labels))
    ignore = ref == ignore_label if ignore_label is not None else None
    results: dict[LabelKey, dict[str, float]] = {}
    for key in dict.fromkeys(keys + instance_keys):
        mask_ref, mask_pred = _mask(ref, key), _mask(pred, key)
        if ignore is not None:
            mask_ref &= ~ignore
            mask_pred &= ~ignore
        metrics: dict[str, float] = {}
        if key in keys:
            if "dice" in families:
                metrics["Dice"] = timer("dice", _dice, mask_pred, mask_ref)
            if "cldice" in families and not topcow:
                metrics["clDice"] = timer("cldice", cldice, mask_pred, mask_ref)
            if "betti" in families:
                present = bool(mask_ref.any() or mask_pred.any())
                errors = timer("betti", betti_errors, mask_pred, mask_ref, settings.connectivity)
                for i, error in enumerate(errors):
                    metrics[f"Betti{i}_error"] = int(error) if present or not topcow else math.nan
            if "surface" in families:
                metrics.update(timer("surface", surface_metrics, mask_pred, mask_ref, spacing,
                                     tolerance=settings.nsd_tolerance, empty_distance=settings.empty_distance))
            if "components" in families:
                metrics.update(timer("components", component_metrics, mask_pred, mask_ref,
                                     iou_threshold=settings.iou_threshold, connectivity=settings.connectivity))
        if key in instance_keys:
            reference = mask_ref if ref_instances is None else np.where(mask_ref, ref_instances, 0)
            metrics.update(timer("instance", instance_metrics, mask_pred, reference,
                                 ref_is_instances=ref_instances is not None, connectivity=settings.connectivity))
        results[key] = metrics
    if "cldice" in families and topcow:
        merged = merged_key(keys)
        mask_ref, mask_pred = _mask(ref, merged), _mask(pred, merged)
        if ignore is not None:
            mask_ref &= ~ignore
            mask_pred &= ~ignore
        value = timer("cldice", cldice_topcow, mask_pred, mask_ref)
        results.setdefault(merged, {})["clDice_TopCoW"] = value
    return results


def _dice(mask_pred: np.ndarray, mask_ref: np.ndarray) -> float:
    """nnU-Net's Dice (``compute_tp_fp_fn_tn``): NaN when both masks are empty."""
    tp = int(np.count_nonzero(mask_pred & mask_ref))
    fp = int(np.count_nonzero(mask_pred)) - tp
    fn = int(np.count_nonzero(mask_ref)) - tp
    return math.nan if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)
