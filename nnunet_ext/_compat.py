"""Version guard: nnunet-ext needs the external-trainer lookup that nnunetv2 added in 2.8.0, and it uses nnU-Net
internals, so it is tested with (and pinned to, in pyproject.toml) nnunetv2 2.8.x."""
from __future__ import annotations

import warnings
from importlib.metadata import PackageNotFoundError, version

MIN_NNUNETV2 = (2, 8)       # first version with nnUNet_extTrainer
TESTED_BELOW = (2, 9)       # first version nnunet-ext is not tested with
NNUNETV2_RANGE = ">=2.8,<2.9"  # the pin in pyproject.toml (tests/test_packaging.py keeps them equal)


def _parse(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split(".")[:2]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def require_nnunetv2(installed: str | None = None) -> None:
    """Raise a RuntimeError naming the fix when nnunetv2 is missing or older than 2.8; warn (RuntimeWarning) when it
    is newer than the tested range."""
    fix = f"pip install 'nnunetv2{NNUNETV2_RANGE}'"
    if installed is None:
        try:
            installed = version("nnunetv2")
        except PackageNotFoundError:
            raise RuntimeError(f"nnunet-ext needs nnunetv2{NNUNETV2_RANGE}, which is not installed: {fix}")
    if _parse(installed) < MIN_NNUNETV2:
        raise RuntimeError(
            f"nnunet-ext needs nnunetv2{NNUNETV2_RANGE} (2.8 added the nnUNet_extTrainer trainer lookup; 2.8.x is "
            f"the tested range), found nnunetv2 {installed}. Upgrade with: {fix}")
    if _parse(installed) >= TESTED_BELOW:
        warnings.warn(f"nnunet-ext is tested with nnunetv2{NNUNETV2_RANGE} and uses nnU-Net internals; found "
                      f"nnunetv2 {installed}. If something breaks: {fix}", RuntimeWarning, stacklevel=2)
