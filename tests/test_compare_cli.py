"""``nnunet-ext compare``: summaries side by side with paired per-case differences, read back and checked."""
from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_ext.cli.nnunet_commands import run_command
from nnunet_ext.cli.evaluate import run_compare
from nnunet_ext.evaluation.compare import default_names, find_summary, paired_difference
from nnunet_ext.evaluation.folders import evaluate_folders

NNUNET_EXT = str(Path(sys.executable).parent / "nnunet-ext")


def _square(shift: int) -> np.ndarray:
    image = np.zeros((12, 12), np.uint8)
    image[3:8, 3 + shift:8 + shift] = 1
    return image


@pytest.fixture(scope="module")
def three_results(tmp_path_factory) -> dict[str, Path]:
    """Four 2D cases; run A shifts cases 2, 3 by one pixel, run B case 1 by three; C is A under TopCoW rules."""
    root = tmp_path_factory.mktemp("compare")
    folders = {name: root / name for name in ("ref", "pred_a", "fold_b/validation")}
    for folder in folders.values():
        folder.mkdir(parents=True)
    shifts = {"pred_a": [0, 0, 1, 1], "fold_b/validation": [0, 3, 0, 0]}
    for i in range(4):
        for name, folder in folders.items():
            image = sitk.GetImageFromArray(_square(0 if name == "ref" else shifts[name][i]))
            image.SetSpacing((0.5, 1.0))
            sitk.WriteImage(image, str(folder / f"case_{i}.nii.gz"))
    common = dict(num_processes=1, families=["dice", "betti", "surface"], progress=False)
    evaluate_folders(folders["ref"], folders["pred_a"], str(folders["pred_a"] / "summary_topology.json"), **common)
    evaluate_folders(folders["ref"], folders["fold_b/validation"],
                     str(folders["fold_b/validation"] / "summary_topology.json"), **common)
    evaluate_folders(folders["ref"], folders["pred_a"], str(root / "c.json"), convention="topcow", **common)
    return {"A": folders["pred_a"], "B": root / "fold_b", "C": root / "c.json", "root": root}


def _per_case(path: Path, metric: str) -> dict[str, float]:
    data = json.loads(path.read_text())
    return {Path(c["reference_file"]).name: c["metrics"]["1"][metric] for c in data["metric_per_case"]}


def _markdown_rows(text: str, section: str) -> dict[str, list[str]]:
    block = text.split(f"## {section}")[1].split("\n## ")[0]
    rows = [line.strip("|").split("|") for line in block.splitlines() if line.startswith("| ")]
    return {cells[0].strip(): [c.strip() for c in cells[1:]] for cells in rows[1:]}


def test_compare_folders_and_json_markdown_and_png(three_results):
    r = three_results
    out = r["root"] / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = run_command([NNUNET_EXT, "compare", str(r["A"]), str(r["B"]), str(r["C"]), "--names", "A", "B", "C",
                          "--markdown", str(out / "compare.md"), "--png", str(out / "compare.png"), "--per-label"],
                         env, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert "Paired per-case differences against A" in result.stdout
    assert "WARNING: C was evaluated under other settings than A (convention 'topcow' vs 'default'" in result.stderr
    assert (out / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    text = (out / "compare.md").read_text()
    a_json = r["A"] / "summary_topology.json"
    b_json = r["B"] / "validation" / "summary_topology.json"
    assert f"`{a_json}` (4 cases)" in text and f"`{b_json}` (4 cases)" in text
    values = _markdown_rows(text, "Foreground mean and per-label means")
    means = [json.loads(p.read_text())["foreground_mean"] for p in (a_json, b_json, r["C"])]
    assert values["Dice"] == [f"{m['Dice']:.4f}" for m in means]
    assert values["HD95"] == [f"{m['HD95']:.3f}" for m in means]
    assert "Dice [1]" in values
    differences = _markdown_rows(text, "Paired per-case differences against A")
    for metric, higher_is_better, decimals in (("Dice", True, 4), ("HD95", False, 3)):
        a, b = _per_case(a_json, metric), _per_case(b_json, metric)
        d = np.array([b[c] - a[c] for c in sorted(a)])
        better = int(np.sum(d > 0 if higher_is_better else d < 0))
        worse = int(np.sum(d < 0 if higher_is_better else d > 0))
        assert (better, worse) == (2, 1)     # B is better in cases 2 and 3, worse in case 1, equal in case 0
        assert abs(d.mean()) > 1e-3
        cells = differences[metric]
        assert cells[0] == f"{d.mean():+.{decimals}f} ± {d.std(ddof=1):.{decimals}f}"
        assert cells[1] == f"{better} / {worse} of 4"
    # C has A's cases and values where the rules agree: no difference in Dice
    assert differences["Dice"][2] == "+0.0000 ± 0.0000" and differences["Dice"][3] == "0 / 0 of 4"


def test_compare_names_differences_and_inputs(three_results, tmp_path):
    names = default_names(["/r/Dataset1/TrainerA__P__2d/fold_0/validation/summary_topology.json",
                           "/r/Dataset1/TrainerB__P__2d/fold_0/validation/summary_topology.json"])
    assert names == ["TrainerA__P__2d/fold_0", "TrainerB__P__2d/fold_0"]
    assert default_names(["/x/a/summary.json", "/y/a/summary.json"]) == ["x/a", "y/a"]
    assert default_names(["/x/run1.json", "/x/run2.json"]) == ["run1", "run2"]
    # lower is better for HD95: d = [-1, 2, 0] -> 1 better, 1 worse
    d = paired_difference({"a": 3.0, "b": 1.0, "c": 5.0, "only_first": 9.0}, {"a": 2.0, "b": 3.0, "c": 5.0}, "HD95")
    assert (d.n, d.better, d.worse) == (3, 1, 1)
    assert (d.mean, d.std) == pytest.approx((1 / 3, float(np.std([-1, 2, 0], ddof=1))))
    counts = paired_difference({"a": 1.0}, {"a": 3.0}, "Comp_n_ref")     # no direction, one case: no std
    assert (counts.better, counts.worse, counts.mean) == (0, 0, 2.0) and math.isnan(counts.std)
    assert find_summary(str(three_results["B"])).endswith(os.path.join("validation", "summary_topology.json"))
    with pytest.raises(FileNotFoundError, match="holds no summary_topology.json"):
        find_summary(str(tmp_path))
    with pytest.raises(ValueError, match="at least two"):
        run_compare([str(three_results["A"])])
    with pytest.raises(ValueError, match="--names has 1 names for 2"):
        run_compare([str(three_results["A"]), str(three_results["C"])], names=["x"])
    with pytest.raises(ValueError, match="no result has the metric"):
        run_compare([str(three_results["A"]), str(three_results["C"])], metrics=["clDice"])
