"""Label-map functions on numpy arrays (no torch, no nnU-Net): what transforms and evaluation build on.

- :mod:`~nnunet_ext.core.labelmaps`: checks of label maps (shape, dtype, values against dataset.json);
- :mod:`~nnunet_ext.core.boxes`: bounding boxes of labelled objects;
- :mod:`~nnunet_ext.core.skeleton`: the tubed skeleton of Skeleton Recall;
- :mod:`~nnunet_ext.core.weightmaps`: the U-Net separation-border weight map.
"""
