"""``nnunet-ext benchmark evaluation --quick``: every metric family timed on one synthetic 3D case."""
from __future__ import annotations

import pytest

import re

import numpy as np

from nnunet_ext.benchmarks import BENCHMARKS, run_benchmark
from nnunet_ext.benchmarks.evaluation import synthetic_pair


def test_synthetic_pair_is_deterministic_with_three_labels():
    pred, ref = synthetic_pair(48, seed=3)
    again, _ = synthetic_pair(48, seed=3)
    assert pred.shape == ref.shape == (48, 48, 48) and np.array_equal(pred, again)
    assert set(np.unique(ref)) == set(np.unique(pred)) == {0, 1, 2, 3}


@pytest.mark.slow  # a benchmark run
def test_quick_benchmark_times_every_family(capsys):
    assert "evaluation" in BENCHMARKS
    assert run_benchmark("evaluation", ["--quick"]) == 0
    out = capsys.readouterr().out
    assert "Evaluation time per 3D case (128³, 3 labels" in out
    for family in ("dice", "cldice", "betti", "surface", "components", "instance", "cldice, --convention topcow",
                   "default families together", "reading the pair"):
        assert re.search(rf"^{re.escape(family)}.*\s(\d+\.\d\d)\s", out, re.MULTILINE), family
    assert re.search(r"^label 1 \(tubes\).*yes$", out, re.MULTILINE) and re.search(r"^label 3 .*yes$", out, re.MULTILINE)
