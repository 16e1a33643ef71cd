"""``nnunet-ext plan -d ID --arch KEY [--loss LOSS]``: nnU-Net's planner for a registered network."""
from __future__ import annotations

import argparse
import pydoc
import sys
from typing import Sequence

import numpy as np

from nnunet_ext.errors import UserInputError
from nnunet_ext.trainers.registry import LOSSES, Architecture, Loss, architecture_for_key, trainer_name


def loss_memory(architecture: Architecture, loss: Loss):
    """(patch, output_channels, arch_kwargs) -> elements ``loss`` keeps for backward over all of the network's
    outputs: every full-resolution output for architectures with full-resolution deep supervision, else
    nnU-Net's scales (the lowest, weighted 0, not counted)."""
    attributes = {**architecture.attributes, **loss.attributes}

    def elements(patch: Sequence[int], output_channels: int, arch_kwargs: dict) -> float:
        per_voxel = loss.backward_elements_per_voxel(output_channels - 1, attributes)
        voxels = float(np.prod(patch))
        if architecture.output_weights is not None:
            return per_voxel * voxels * len(architecture.output_weights(arch_kwargs, attributes))
        factors = np.cumprod(np.array(arch_kwargs["strides"], dtype=float), axis=0)[:-1]
        return per_voxel * voxels * float(sum(1 / np.prod(f) for f in factors))

    return elements


def planner_class(architecture: Architecture, loss_name: str):
    from nnunet_ext.networks.planning import with_loss_memory
    planner = pydoc.locate(architecture.planner)
    if planner is None:
        raise UserInputError(f"the planner {architecture.planner} of {architecture.name} cannot be imported")
    if not loss_name:
        return planner
    loss = LOSSES[loss_name]
    if loss.backward_elements_per_voxel is None:
        print(f"nnunet-ext plan: {loss_name} keeps little for backward; planning for the network alone",
              file=sys.stderr)
        return planner
    return with_loss_memory(planner, loss_memory(architecture, loss), loss_name)


def run_plan(args: argparse.Namespace) -> int:
    from nnunet_ext.networks.planning import plan_dataset, planned_configurations
    try:
        architecture = architecture_for_key(args.arch)
        planner = planner_class(architecture, args.loss)
        trainer = trainer_name(architecture.name, args.loss)
        for dataset_id in args.dataset_ids:
            identifier = plan_dataset(dataset_id, planner, args.gpu_memory_target, args.plans_name,
                                      args.configurations if args.preprocess else (), args.num_processes,
                                      args.fingerprint_processes)
            available = planned_configurations(dataset_id, identifier)
            print(f"Dataset {dataset_id}: plans {identifier}.json written (configurations: {', '.join(available)}).")
            skipped = [c for c in args.configurations if args.preprocess and c not in available]
            if skipped:
                print(f"Not preprocessed: {', '.join(skipped)} (not in these plans)")
            if not args.preprocess:
                print(f"Preprocess: nnUNetv2_preprocess -d {dataset_id} -plans_name {identifier} -c "
                      f"{' '.join(c for c in available if not c.endswith('cascade_fullres'))}")
            print(f"Train: nnUNetv2_train {dataset_id} {available[0]} FOLD -p {identifier} -tr {trainer}")
    except (KeyError, RuntimeError, FileNotFoundError) as error:
        print(f"nnunet-ext plan: {error}", file=sys.stderr)
        return 1
    except UserInputError as error:
        print(f"nnunet-ext plan: {error.message}", file=sys.stderr)
        return 1
    return 0
