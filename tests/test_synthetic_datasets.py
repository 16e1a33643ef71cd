"""The synthetic datasets for GLNet (long-range context), DAWMR/LED (EM membranes) and thick vessel trees."""
from __future__ import annotations

import itertools
import json
import os
from pathlib import Path

import cc3d
import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage
from skimage.morphology import skeletonize

from nnunet_ext.errors import UserInputError
from nnunet_ext.testing import raw_dataset
from nnunet_ext.testing.context import (DISC, RING, context_case, default_margin, marker_mask, marker_zone,
                                        write_context_dataset)
from nnunet_ext.testing.em import em_case, em_case_details, membrane_statistics, write_em_dataset
from nnunet_ext.testing.trees import thick_tree_case, write_thick_tree_dataset


def _read(path: str) -> tuple[np.ndarray, tuple[float, ...]]:
    image = sitk.ReadImage(path)
    return sitk.GetArrayFromImage(image), tuple(image.GetSpacing())[::-1]


def _touching_pairs(instances: np.ndarray) -> int:
    """Neighbouring voxels (full connectivity) of two different non-zero ids."""
    count = 0
    for offset in itertools.product((-1, 0, 1), repeat=instances.ndim):
        a = tuple(slice(max(0, -o), n - max(0, o)) for o, n in zip(offset, instances.shape))
        b = tuple(slice(max(0, o), n - max(0, -o)) for o, n in zip(offset, instances.shape))
        count += int(((instances[a] > 0) & (instances[b] > 0) & (instances[a] != instances[b])).sum())
    return count


def _branch_points(mask: np.ndarray) -> int:
    """Clusters of skeleton voxels with 3 or more skeleton neighbours (26-neighbourhood)."""
    skeleton = skeletonize(mask)
    neighbours = ndimage.convolve(skeleton.astype(int), np.ones((3,) * mask.ndim, int), mode="constant") - 1
    return ndimage.label(skeleton & (neighbours >= 3), np.ones((3,) * mask.ndim))[1]


# ------------------------------------------------------------------------------------------ determinism

@pytest.mark.parametrize("make", [
    lambda seed: context_case((128, 128), seed),
    lambda seed: context_case((64, 64, 64), seed),
    lambda seed: em_case((64, 64), seed),
    lambda seed: em_case((8, 40, 40), seed, (5.0, 1.0, 1.0)),
    lambda seed: thick_tree_case((24, 48, 48), seed, radius=(2.0, 3.0), depth=3),
], ids=["context2d", "context3d", "em2d", "em3d", "trees"])
def test_cases_are_deterministic_by_seed(make):
    first, again, other = make(3), make(3), make(4)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[0], other[0])
    assert first[0].dtype == np.float32 and first[1].dtype == np.uint8


# ------------------------------------------------------------------------------------------ context

@pytest.mark.parametrize("shape", [(128, 128), (64, 64, 64)])
def test_the_class_is_set_by_the_far_marker_alone(shape):
    one_image, one_label = context_case(shape, 11, kind=DISC)
    two_image, two_label = context_case(shape, 11, kind=RING)
    assert set(np.unique(one_label)) == {0, 1} and set(np.unique(two_label)) == {0, 2}
    np.testing.assert_array_equal(one_label > 0, two_label > 0)          # same structures, other class
    beyond = ~marker_zone(shape)
    np.testing.assert_array_equal(one_image[beyond], two_image[beyond])
    assert abs(one_image.mean() - two_image.mean()) < 1e-6              # nothing for z-score normalisation
    assert abs(one_image.std() / two_image.std() - 1) < 5e-3          # (cases differ by ~5%)
    inside = marker_zone(shape)
    assert np.abs(one_image[inside] - two_image[inside]).max() > 0.5     # the marker itself differs


@pytest.mark.parametrize("shape", [(128, 128), (64, 64, 64)])
def test_no_window_up_to_the_margin_sees_a_structure_and_the_marker(shape):
    margin = default_margin(shape)
    for seed in range(3):
        _, label = context_case(shape, seed)
        structure, zone = np.argwhere(label > 0), np.argwhere(marker_zone(shape))
        chebyshev = np.abs(structure[:, None, :] - zone[None, :, :]).max(-1)   # brute force, every pair
        assert chebyshev.min() >= margin
        # the same claim window by window: no margin-sized window holds both, a twice as large one does
        for size, both_seen in ((margin, False), (2 * margin, True)):
            holds_structure = ndimage.maximum_filter(label > 0, size=size, mode="constant")
            holds_marker = ndimage.maximum_filter(marker_zone(shape), size=size, mode="constant")
            assert (holds_structure & holds_marker).any() == both_seen


def test_disc_and_ring_have_the_same_volume_and_differ_in_shape():
    for shape in [(128, 128), (512, 512), (64, 64, 64)]:
        disc, ring = marker_mask(shape, DISC), marker_mask(shape, RING)
        assert disc.sum() == ring.sum() > 50
        zone = marker_zone(shape)
        assert not (disc & ~zone).any() and not (ring & ~zone).any()
        centre = tuple(int(c) for c in np.argwhere(zone).mean(0).round())
        assert disc[centre] and not ring[centre]
        assert ndimage.label(~ring)[1] == 2 and ndimage.label(~disc)[1] == 1   # the ring encloses a hole
    with pytest.raises(ValueError, match="kind"):
        marker_mask((128, 128), 3)


def test_context_dataset_balances_the_classes(tmp_path):
    folder = write_context_dataset(5, dim=2, n_train=4, n_test=2, shape=(96, 96), raw_root=tmp_path)
    classes = []
    for split, n in (("Tr", 4), ("Ts", 2)):
        for i in range(n):
            case = f"context_{i + (0 if split == 'Tr' else 4):04d}.nii.gz"
            label, _ = _read(os.path.join(folder, f"labels{split}", case))
            classes.append(int(label.max()))
            assert set(np.unique(label)) == {0, label.max()}
    assert classes == [1, 2, 1, 2, 1, 2]
    dataset = json.loads(Path(folder, "dataset.json").read_text())
    assert dataset["labels"] == {"background": 0, "near_disc": 1, "near_ring": 2}
    assert dataset["numTraining"] == 4


# ------------------------------------------------------------------------------------------ EM

@pytest.mark.parametrize("shape, spacing", [((96, 96), (1.0, 1.0)), ((12, 48, 48), (5.0, 1.0, 1.0))])
def test_em_instances_are_cells_separated_by_the_membrane(shape, spacing):
    case = em_case_details(shape, 2, spacing)
    label, instances = case["label"], case["instances"]
    assert instances.dtype == np.int32 and set(np.unique(label)) == {0, 1}
    np.testing.assert_array_equal(instances == 0, label == 1)
    ids = np.unique(instances)[1:]
    assert len(ids) >= 8
    np.testing.assert_array_equal(ids, np.arange(1, len(ids) + 1))
    full = 8 if len(shape) == 2 else 26
    for i in ids:                                        # every instance is one connected cell interior
        assert cc3d.connected_components((instances == i).astype(np.uint8), connectivity=full).max() == 1
    assert _touching_pairs(instances) == 0               # two cells never meet across a non-membrane voxel
    # so the regions between the label's membranes (what the membrane-task evaluation takes as instances) are
    # exactly the saved instances
    regions = cc3d.connected_components((label == 0).astype(np.uint8), connectivity=full)
    pairs = np.unique(np.stack([regions[instances > 0], instances[instances > 0]]), axis=1)
    assert pairs.shape[1] == len(ids) == regions.max()
    # ... because of the membrane: give its voxels to the nearest cell and cells touch everywhere
    nearest = ndimage.distance_transform_edt(instances == 0, return_distances=False, return_indices=True)
    assert _touching_pairs(instances[tuple(nearest)]) > 100


@pytest.mark.parametrize("shape, spacing", [((128, 128), (1.0, 1.0)), ((12, 64, 64), (5.0, 1.0, 1.0))])
def test_em_membranes_are_thin_dark_and_have_faint_gaps(shape, spacing):
    case = em_case_details(shape, 5, spacing)
    figures = membrane_statistics(case["label"], case["instances"], case["strength"])
    assert 1.0 <= figures["thickness_voxels"] <= 2.2
    assert 0.05 < figures["membrane_fraction"] < 0.35
    assert 0.005 < figures["gap_fraction"] < 0.3
    image, membrane, strength = case["image"], case["label"] == 1, case["strength"]
    cytoplasm = image[~membrane].mean()
    full, gap = membrane & (strength > 0.95), membrane & (strength < 0.4)
    assert cytoplasm - image[full].mean() > 0.1                               # membranes are dark ...
    assert cytoplasm - image[gap].mean() < 0.5 * (cytoplasm - image[full].mean())   # ... but faint in the gaps
    no_gaps = em_case_details(shape, 5, spacing, gap_rate=0.0)
    assert membrane_statistics(no_gaps["label"], no_gaps["instances"], no_gaps["strength"])["gap_fraction"] == 0
    np.testing.assert_array_equal(no_gaps["label"], case["label"])           # gaps are in the image only


def test_em_cells_are_elongated_along_the_coarse_axis():
    spacing = np.array([5.0, 1.0, 1.0])
    _, _, instances = em_case((12, 64, 64), 1, tuple(spacing))
    ratios = []
    for box in ndimage.find_objects(instances):
        extent = np.array([s.stop - s.start for s in box]) * spacing
        if box[0].start > 0 or box[0].stop < instances.shape[0]:
            ratios.append(extent[0] / extent[1:].mean())            # (cells cut by the volume's ends aside)
    assert np.median(ratios) > 1.5


def test_em_dataset_layout_spacing_and_instances(tmp_path):
    spacing = (5.0, 1.0, 1.0)
    folder = write_em_dataset(7, dim=3, n_train=2, n_test=1, shape=(8, 40, 40), spacing=spacing, raw_root=tmp_path)
    assert os.path.basename(folder) == "Dataset007_EMCells3D"
    dataset = json.loads(Path(folder, "dataset.json").read_text())
    assert dataset["labels"] == {"background": 0, "membrane": 1} and dataset["numTraining"] == 2
    assert dataset["file_ending"] == ".nii.gz" and dataset["channel_names"] == {"0": "EM"}
    assert sorted(os.listdir(os.path.join(folder, "instancesTs"))) == sorted(os.listdir(os.path.join(folder,
                                                                                                      "labelsTs")))
    image, image_spacing = _read(os.path.join(folder, "imagesTs", "em_0002_0000.nii.gz"))
    label, label_spacing = _read(os.path.join(folder, "labelsTs", "em_0002.nii.gz"))
    instances, _ = _read(os.path.join(folder, "instancesTs", "em_0002.nii.gz"))
    assert image.shape == (8, 40, 40) and image_spacing == spacing == label_spacing
    assert instances.dtype == np.int32
    np.testing.assert_array_equal(instances == 0, label == 1)
    expected = em_case((8, 40, 40), 2, spacing)                       # case i uses seed * 100003 + i (seed 0)
    np.testing.assert_array_equal(label, expected[1])
    np.testing.assert_allclose(image, expected[0])
    folder_2d = write_em_dataset(8, dim=2, n_train=1, n_test=1, shape=(48, 48), raw_root=tmp_path)
    assert _read(os.path.join(folder_2d, "labelsTr", "em_0000.nii.gz"))[0].shape == (48, 48)


# ------------------------------------------------------------------------------------------ trees

@pytest.mark.parametrize("seed", [0, 1])
def test_thick_trees_are_two_branching_trees_of_the_asked_radius(seed):
    spacing = (2.0, 1.0, 1.0)
    _, label = thick_tree_case((32, 64, 64), seed, radius=(3.0, 4.5), spacing=spacing, depth=3)
    assert set(np.unique(label)) == {0, 1, 2}
    for k in (1, 2):
        tree = label == k
        assert cc3d.connected_components(tree.astype(np.uint8), connectivity=26).max() == 1   # one tree
        assert _branch_points(tree) >= 1                                                       # it branches
        radius = ndimage.distance_transform_edt(tree, sampling=spacing)[skeletonize(tree)]    # mm
        assert 2.5 <= np.median(radius) <= 5.0


def test_trees_without_branching_have_no_branch_points_and_thin_trees_are_thin():
    spacing = (2.0, 1.0, 1.0)
    _, single = thick_tree_case((32, 64, 64), 0, n_classes=1, radius=(3.0, 4.5), spacing=spacing, depth=1)
    assert set(np.unique(single)) == {0, 1} and _branch_points(single == 1) == 0
    _, thick = thick_tree_case((32, 64, 64), 3, radius=(3.0, 4.5), spacing=spacing)
    _, thin = thick_tree_case((32, 64, 64), 3, radius=(1.0, 1.5), spacing=spacing)
    def median_radius(label):
        return np.median(ndimage.distance_transform_edt(label > 0, sampling=spacing)[skeletonize(label > 0)])
    assert median_radius(thin) <= 2.0 and median_radius(thick) >= 3.0
    assert (thick > 0).sum() > 4 * (thin > 0).sum()
    for k in (1, 2):                                   # thin trees on 2 mm voxels still hold together
        assert cc3d.connected_components((thin == k).astype(np.uint8), connectivity=26).max() == 1


def test_tree_dataset_files_carry_the_anisotropic_spacing(tmp_path):
    spacing = (2.0, 1.0, 1.0)
    folder = write_thick_tree_dataset(9, n_train=1, n_test=1, shape=(24, 48, 48), spacing=spacing,
                                      raw_root=tmp_path, radius=(2.0, 3.0), depth=2)
    assert os.path.basename(folder) == "Dataset009_ThickTrees3D"
    image, image_spacing = _read(os.path.join(folder, "imagesTr", "tree_0000_0000.nii.gz"))
    label, label_spacing = _read(os.path.join(folder, "labelsTs", "tree_0001.nii.gz"))
    assert image.shape == label.shape == (24, 48, 48) and image_spacing == label_spacing == spacing
    dataset = json.loads(Path(folder, "dataset.json").read_text())
    assert dataset["labels"] == {"background": 0, "tree_1": 1, "tree_2": 2}
    thin = write_thick_tree_dataset(10, n_train=1, n_test=0, shape=(24, 48, 48), raw_root=tmp_path,
                                    radius=(1.0, 1.5), depth=2)
    assert os.path.basename(thin) == "Dataset010_ThinTrees3D" and not os.listdir(os.path.join(thin, "imagesTs"))


def test_one_label_tree_dataset_has_the_same_images_and_trees_under_one_label(tmp_path):
    options = dict(n_train=1, n_test=1, shape=(24, 48, 48), raw_root=tmp_path, radius=(2.0, 3.0), depth=2, seed=4)
    two = write_thick_tree_dataset(11, name="Two", **options)
    one = write_thick_tree_dataset(12, name="One", one_label=True, **options)
    assert json.loads(Path(one, "dataset.json").read_text())["labels"] == {"background": 0, "vessel": 1}
    for part, case in (("Tr", "tree_0000"), ("Ts", "tree_0001")):
        image_two, _ = _read(os.path.join(two, f"images{part}", f"{case}_0000.nii.gz"))
        image_one, _ = _read(os.path.join(one, f"images{part}", f"{case}_0000.nii.gz"))
        label_two, _ = _read(os.path.join(two, f"labels{part}", f"{case}.nii.gz"))
        label_one, _ = _read(os.path.join(one, f"labels{part}", f"{case}.nii.gz"))
        assert np.array_equal(image_one, image_two)
        assert set(np.unique(label_two)) == {0, 1, 2} and np.array_equal(label_one, (label_two > 0).astype(np.uint8))


# ------------------------------------------------------------------------------------------ writers

WRITERS = {
    "context": lambda i, root, **kw: write_context_dataset(i, dim=2, n_train=1, n_test=0, shape=(64, 64),
                                                           raw_root=root, **kw),
    "em": lambda i, root, **kw: write_em_dataset(i, dim=2, n_train=1, n_test=0, shape=(32, 32), raw_root=root,
                                                 **kw),
    "trees": lambda i, root, **kw: write_thick_tree_dataset(i, n_train=1, n_test=0, shape=(16, 32, 32),
                                                            radius=(1.5, 2.0), depth=2, raw_root=root, **kw),
}


@pytest.mark.parametrize("writer", WRITERS.values(), ids=WRITERS.keys())
def test_an_existing_id_is_refused_unless_overwrite(writer, tmp_path):
    other = tmp_path / "Dataset042_Other"
    other.mkdir()
    (other / "keep.txt").write_text("x")
    with pytest.raises(UserInputError, match="already exists.*Dataset042_Other.*--overwrite"):
        writer(42, tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["Dataset042_Other"]             # nothing written, nothing removed
    (tmp_path / "Dataset420_Unrelated").mkdir()
    folder = writer(42, tmp_path, overwrite=True)
    assert sorted(os.listdir(tmp_path)) == sorted([os.path.basename(folder), "Dataset420_Unrelated"])
    assert os.path.isfile(os.path.join(folder, "dataset.json"))
    assert len(os.listdir(os.path.join(folder, "imagesTr"))) == 1


@pytest.mark.parametrize("writer", WRITERS.values(), ids=WRITERS.keys())
def test_arguments_are_checked_before_anything_is_written(writer, tmp_path, monkeypatch):
    for bad, match in [({"seed": -1}, "seed"), ({"name": "a b"}, "name"), ({"overwrite": "yes"}, "overwrite")]:
        with pytest.raises(ValueError, match=match) as error:
            writer(43, tmp_path, **bad)
        assert isinstance(error.value, UserInputError)
    with pytest.raises(UserInputError, match="dataset_id"):
        writer(1000, tmp_path)
    assert os.listdir(tmp_path) == []
    monkeypatch.delenv("nnUNet_raw", raising=False)
    with pytest.raises(UserInputError, match="export nnUNet_raw="):
        writer(44, None)


def test_bad_shapes_and_spacings_name_the_argument(tmp_path):
    with pytest.raises(ValueError, match=r"shape \(--shape\).*needs 3"):
        write_em_dataset(1, dim=3, shape=(32, 32), raw_root=tmp_path)
    with pytest.raises(ValueError, match="spacing"):
        write_em_dataset(1, dim=3, shape=(8, 32, 32), spacing=(5.0, 0.0, 1.0), raw_root=tmp_path)
    with pytest.raises(ValueError, match=">= 64"):
        write_context_dataset(1, dim=2, shape=(48, 48), raw_root=tmp_path)
    with pytest.raises(ValueError, match="radius"):
        write_thick_tree_dataset(1, shape=(16, 32, 32), radius=(3.0, 2.0), raw_root=tmp_path)
    with pytest.raises(ValueError, match="does not fit"):
        write_thick_tree_dataset(1, shape=(8, 16, 16), radius=(6.0, 8.0), raw_root=tmp_path)
    with pytest.raises(ValueError, match="n_train"):
        write_thick_tree_dataset(1, n_train=0, raw_root=tmp_path)
    assert os.listdir(tmp_path) == []


def test_write_image_keeps_the_numpy_axis_order_of_the_spacing(tmp_path):
    path = str(tmp_path / "a.nii.gz")
    raw_dataset.write_image(np.zeros((3, 4, 5), np.float32), path, (5.0, 2.0, 1.0))
    image = sitk.ReadImage(path)
    assert image.GetSize() == (5, 4, 3) and image.GetSpacing() == (1.0, 2.0, 5.0)
