"""``nnUNetv2_train`` unchanged, plus the peak CUDA memory of the process (quality benchmark, CUDA runs).

``python -m nnunet_ext.benchmarks._quality_train ID CONF FOLD -tr TRAINER ...`` calls nnU-Net's own
``run_training_entry`` with the same arguments; on exit it writes ``torch.cuda.max_memory_allocated()``
(bytes) to the file named by ``$NNUNET_EXT_PEAK_CUDA_FILE``.
"""
from __future__ import annotations

import os


def _write_peak_cuda(path: str) -> None:
    import torch
    if torch.cuda.is_available():
        with open(path, "w") as f:
            f.write(str(int(torch.cuda.max_memory_allocated())))


def main() -> None:
    """Train with nnU-Net's entry point, then record the peak CUDA memory."""
    from nnunetv2.run.run_training import run_training_entry

    from nnunet_ext.benchmarks._quality_runs import PEAK_CUDA_FILE_ENV
    try:
        run_training_entry()
    finally:
        if os.environ.get(PEAK_CUDA_FILE_ENV):
            _write_peak_cuda(os.environ[PEAK_CUDA_FILE_ENV])


if __name__ == "__main__":
    main()
