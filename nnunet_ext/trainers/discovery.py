"""How nnU-Net finds our trainers.

nnU-Net 2.8 looks up a trainer name first inside nnunetv2, then in every folder listed in the
environment variable ``nnUNet_extTrainer`` (split by ``os.pathsep``). It imports each module of such a
folder as a top-level module and afterwards drops from ``sys.modules`` every module whose file lies under
that folder. A class *defined* there would therefore not pickle to itself (spawn/forkserver workers fail),
so the folder we register only holds ``nnunet_ext_trainer_exports.py``, which re-exports the classes that
live in :mod:`nnunet_ext.trainers`.

The wheel installs ``nnunet_ext.pth`` into site-packages; Python executes it at start-up and it calls
:func:`register_trainer_folder`, so ``nnUNetv2_train ... -tr nnUNetTrainerSkelRecall`` works with no
export. Set ``NNUNET_EXT_NO_AUTOREGISTER=1`` to switch that off and export the folder yourself:
``export nnUNet_extTrainer=$(nnunet-ext trainer-path)``.
"""
from __future__ import annotations

import os

ENV_VAR = "nnUNet_extTrainer"
OPT_OUT_VAR = "NNUNET_EXT_NO_AUTOREGISTER"


def trainer_folder() -> str:
    """Absolute path of the folder that nnU-Net scans for our trainers (contains only re-exports)."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "nnunet_trainer_exports")


def register_trainer_folder() -> None:
    """Append :func:`trainer_folder` to ``nnUNet_extTrainer`` unless it is listed or the user opted out.

    Runs at interpreter start-up, so it must stay cheap and must never raise.
    """
    if os.environ.get(OPT_OUT_VAR, "").strip() not in ("", "0"):
        return
    folder = trainer_folder()
    current = [p for p in os.environ.get(ENV_VAR, "").split(os.pathsep) if p.strip()]
    if any(os.path.abspath(p) == folder for p in current):
        return
    os.environ[ENV_VAR] = os.pathsep.join(current + [folder])
