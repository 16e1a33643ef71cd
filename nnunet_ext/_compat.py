"""Version guard: nnunet-ext needs the external-trainer lookup that nnunetv2 added in 2.8.0."""
from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

MIN_NNUNETV2 = (2, 8)


def _parse(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split(".")[:2]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def require_nnunetv2(installed: str | None = None) -> None:
    """Raise a RuntimeError naming the fix when nnunetv2 is missing or older than 2.8."""
    if installed is None:
        try:
            installed = version("nnunetv2")
        except PackageNotFoundError:
            raise RuntimeError("nnunet-ext needs nnunetv2>=2.8, which is not installed: pip install 'nnunetv2>=2.8'")
    if _parse(installed) < MIN_NNUNETV2:
        raise RuntimeError(
            f"nnunet-ext needs nnunetv2>=2.8 (its nnUNet_extTrainer trainer lookup), found nnunetv2 {installed}. "
            "Upgrade with: pip install -U 'nnunetv2>=2.8'")
