"""Smooth random textures for the synthetic generators, cheap at any correlation length."""
from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import fft


def smooth_noise(shape: Sequence[int], rng: np.random.Generator, length: float | Sequence[float]) -> np.ndarray:
    """Gaussian random field of ``shape`` (float32, mean 0, std 1), white noise smoothed by a Gaussian of sigma
    ``length / 2`` voxels per axis (periodic, in the Fourier domain: the cost does not grow with ``length``)."""
    shape = tuple(int(n) for n in shape)
    sigma = np.broadcast_to(np.asarray(length, float), (len(shape),)) / 2.0
    spectrum = fft.rfftn(rng.standard_normal(size=shape, dtype=np.float32))
    frequencies = [np.fft.fftfreq(n) for n in shape[:-1]] + [np.fft.rfftfreq(shape[-1])]
    grid = np.ogrid[tuple(slice(0, len(f)) for f in frequencies)]
    exponent = sum((f[g] * s) ** 2 for f, g, s in zip(frequencies, grid, sigma)) * (-2.0 * np.pi ** 2)
    field = fft.irfftn(spectrum * np.exp(exponent).astype(np.float32), s=shape)
    field -= field.mean()
    return (field / max(float(field.std()), 1e-12)).astype(np.float32)
