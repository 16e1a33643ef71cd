"""Trainer mixin: how GLNet's training windows are sampled when the window holds the whole image.

nnU-Net oversamples foreground: a third of each batch (one of two samples at batch size 2) is cropped around a
random foreground voxel, clipped only at the lower bound, so the crop may reach half a window beyond the image
(padding). For a U-Net whose patch is smaller than the image that is harmless. GLNet's window is meant to hold
the wide context, and ``nnunet-ext plan --arch glnet`` makes it as large as the median image: then every random
crop is the whole image, centred, already holding all foreground, while a foreground crop shifts up to half of it
out of view (on the synthetic context data the class-setting marker was cut from 54% of GLNet's training
samples). So where the window covers the plans' median image size along every axis, GLNet trainers sample no
foreground crops (``oversample_foreground_percent`` 0); otherwise they keep nnU-Net's 0.33.

``glnet_foreground_oversampling`` (class attribute) overrides the rule: a fraction in [0, 1] (nnU-Net's
meaning); None (default) is the rule above. The choice is logged at initialisation; under DDP nnU-Net divides it
among the ranks as usual.
"""
from __future__ import annotations

import math

from nnunet_ext.errors import UserInputError


def window_covers_image(window, median_image_size) -> bool:
    """Whether the window is at least the median image size along every axis."""
    return all(w >= m for w, m in zip(window, median_image_size))


class GLNetSamplingMixin:
    """Foreground oversampling for GLNet's windows (module docstring)."""

    glnet_foreground_oversampling: float | None

    def foreground_oversampling(self) -> float:
        """The fraction of foreground crops per batch this trainer uses (before nnU-Net's DDP split)."""
        chosen = self.glnet_foreground_oversampling
        if chosen is not None:
            if isinstance(chosen, bool) or not isinstance(chosen, (int, float)) or not (
                    math.isfinite(chosen) and 0 <= chosen <= 1):
                raise UserInputError(f"glnet_foreground_oversampling must be a fraction in [0, 1] or None (0 when "
                                     f"the window holds the whole image, else nnU-Net's 0.33), got {chosen!r}")
            return float(chosen)
        window = self.configuration_manager.patch_size
        if window_covers_image(window, self.configuration_manager.median_image_size_in_voxels):
            return 0.0
        return self.oversample_foreground_percent

    def _set_batch_size_and_oversample(self):
        nnunets = self.oversample_foreground_percent
        self.oversample_foreground_percent = self.foreground_oversampling()
        if self.oversample_foreground_percent != nnunets:
            self.print_to_log_file(
                f"GLNet: foreground oversampling {self.oversample_foreground_percent:g} instead of nnU-Net's "
                f"{nnunets:g} (window {tuple(self.configuration_manager.patch_size)}, median image "
                f"{tuple(self.configuration_manager.median_image_size_in_voxels)}; glnet_foreground_oversampling)")
        super()._set_batch_size_and_oversample()
