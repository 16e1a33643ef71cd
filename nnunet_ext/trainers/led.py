"""Trainer mixin: nnU-Net's Dice + CE weighted by LED, the local density of the network's own errors (registry loss
``LED``; the definition is :mod:`nnunet_ext.losses.led`'s)."""
from __future__ import annotations

from nnunet_ext.losses.deep_supervision import extend_per_scale_loss
from nnunet_ext.losses.led import LEDWeightedDiceCELoss, led_window


def led_strength(epoch: int, num_epochs: int, warmup: float, ramp: float) -> float:
    """The LED blend at ``epoch``: 0 for the first ``warmup`` fraction of the epochs, then a linear ramp to 1 over
    the next ``ramp`` fraction (at once when ``ramp`` is 0). E.g. 1000 epochs, 0.1, 0.1: 0 until epoch 100, 1 from
    epoch 200."""
    if not (0 <= warmup <= 1 and 0 <= ramp <= 1):
        raise ValueError(f"led_warmup and led_ramp are fractions of the epochs in [0, 1], got {warmup}, {ramp}")
    progress = epoch / max(num_epochs, 1) - warmup
    if progress < 0:
        return 0.0
    return 1.0 if ramp == 0 else min(1.0, progress / ramp)


class LEDMixin:
    """Dice + CE with every voxel's CE weighted by the local density of the current errors (LED), at every
    deep-supervision scale (the window shrinks with the scale); Dice unchanged; the ignore label masked as nnU-Net
    masks it; region-based training supported.

    Knobs (class attributes, defaults from the registry): ``led_window`` (voxels along the finest axis; coarser
    axes get proportionally fewer voxels from the plans' spacing), ``led_alpha``, ``led_max_weight``,
    ``led_warmup`` and ``led_ramp`` (fractions of the epochs: plain Dice + CE first, then LED blended in, so the
    errors it weights come from a network that has learnt something).
    """

    led_window: int
    led_alpha: float
    led_max_weight: float
    led_warmup: float
    led_ramp: float

    def led_window_voxels(self) -> tuple[int, ...]:
        """The window per axis: ``led_window`` voxels along the finest axis, the same physical size elsewhere."""
        spacing = [float(s) for s in self.configuration_manager.spacing]
        return led_window(self.led_window * min(spacing), spacing)

    def _build_loss(self):
        window = self.led_window_voxels()
        patch = self.configuration_manager.patch_size
        return extend_per_scale_loss(super()._build_loss(), lambda inner: LEDWeightedDiceCELoss(
            inner, window=window, alpha=self.led_alpha, max_weight=self.led_max_weight, patch_size=patch,
            strength=self.led_strength()))

    def led_strength(self) -> float:
        return led_strength(self.current_epoch, self.num_epochs, self.led_warmup, self.led_ramp)

    def on_train_epoch_start(self):
        super().on_train_epoch_start()
        strength = self.led_strength()
        for module in self.loss.modules():
            if isinstance(module, LEDWeightedDiceCELoss):
                module.strength = strength
        self.print_to_log_file(f"LED strength {strength:.2f}")
