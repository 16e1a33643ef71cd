"""nnunet-ext: custom nnU-Net v2 trainers that the unchanged nnU-Net command line finds.

This module stays import-light (no torch, no nnunetv2): it runs at every interpreter start-up
through the installed ``nnunet_ext.pth`` hook (see :mod:`nnunet_ext.trainers.discovery`).
"""
__version__ = "0.1.0"
