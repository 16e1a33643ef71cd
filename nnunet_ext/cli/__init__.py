"""The ``nnunet-ext`` command line (:mod:`~nnunet_ext.cli.main`), the demo, and the one runner of nnU-Net
commands (:mod:`~nnunet_ext.cli.nnunet_commands`)."""
from nnunet_ext.cli.main import main

__all__ = ["main"]
