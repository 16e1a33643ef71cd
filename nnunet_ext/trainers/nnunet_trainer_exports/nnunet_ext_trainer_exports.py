"""Scanned by nnU-Net's trainer lookup (nnUNet_extTrainer). Only re-exports: the classes live in the
installed package so that they pickle to themselves. Do not define classes here."""
from nnunet_ext.trainers.generated import *  # noqa: F401,F403
from nnunet_ext.trainers.generated import __all__  # noqa: F401
