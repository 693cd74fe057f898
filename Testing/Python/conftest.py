"""Shared fixtures: phantoms with analytically known geometry, the bundled sample and model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from safetensors import safe_open
from safetensors.torch import save_file

REPOSITORY = Path(__file__).resolve().parents[2]
SAMPLE_IMAGE = REPOSITORY / "LeftAtriumSeg" / "Resources" / "SampleData" / "la_022_crop.nii.gz"
SAMPLE_LABEL = REPOSITORY / "LeftAtriumSeg" / "Resources" / "SampleData" / "la_022_crop_label.nii.gz"

def besides_copies_of_one_scan(stderr: str) -> list[str]:
    """Standard error's lines but the warning that cases are copies of one scan, which the tests
    that copy the sample under several names get as a user would."""
    return [line for line in stderr.splitlines() if "recorded under more than one case name" not in line]


# A grid that exercises every part of the geometry: oblique direction, anisotropic
# spacing, non-zero origin.
OBLIQUE_DIRECTION = tuple(
    sitk.VersorTransform((0.2, 0.9, 0.3), 0.4).GetMatrix()
)
SPACING_MM = (0.9, 1.1, 1.6)
ORIGIN_MM = (-35.0, 12.5, 80.0)


def rewrite_safetensors(path: Path, edit) -> None:
    """Save the safetensors file at ``path`` again after ``edit(metadata, tensors)`` changed its
    metadata and tensor dicts in place: a damaged or hand-edited model file or checkpoint."""
    with safe_open(str(path), framework="pt") as handle:
        metadata, tensors = handle.metadata(), {name: handle.get_tensor(name) for name in handle.keys()}
    edit(metadata, tensors)
    save_file(tensors, str(path), metadata=metadata)


def make_image(array_zyx: np.ndarray, spacing=SPACING_MM, origin=ORIGIN_MM, direction=OBLIQUE_DIRECTION) -> sitk.Image:
    image = sitk.GetImageFromArray(array_zyx)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction)
    return image


def physical_coordinates(image: sitk.Image) -> np.ndarray:
    """``(Z, Y, X, 3)`` physical coordinates (mm) of every voxel centre."""
    size = image.GetSize()
    k, j, i = np.meshgrid(*(np.arange(n) for n in size[::-1]), indexing="ij")
    index = np.stack([i, j, k], -1).astype(float)
    matrix = np.array(image.GetDirection()).reshape(3, 3) * np.array(image.GetSpacing())
    return index @ matrix.T + np.array(image.GetOrigin())


def ellipsoid_mask(image: sitk.Image, centre_mm, radii_mm) -> np.ndarray:
    points = physical_coordinates(image)
    return (((points - np.array(centre_mm)) / np.array(radii_mm)) ** 2).sum(-1) <= 1.0


def ellipsoid_phantom(size=(64, 56, 40), radii_mm=(14.0, 11.0, 9.0), seed=0, **geometry):
    """A bright ellipsoid in a noisy darker background: ``(image, mask, radii_mm)``.

    The ellipsoid sits at the centre of the field of view.
    """
    image = make_image(np.zeros(size[::-1], dtype=np.float32), **geometry)
    centre = image.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in size])
    mask = ellipsoid_mask(image, centre, radii_mm)
    rng = np.random.default_rng(seed)
    voxels = (100 + 300 * mask + rng.normal(0, 20, mask.shape)).astype(np.float32)
    phantom = sitk.GetImageFromArray(voxels)
    phantom.CopyInformation(image)
    return phantom, mask, radii_mm


@pytest.fixture(scope="session")
def sample_image() -> sitk.Image:
    return sitk.ReadImage(str(SAMPLE_IMAGE))


@pytest.fixture(scope="session")
def sample_label() -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(SAMPLE_LABEL))) > 0


@pytest.fixture(scope="session")
def segmenter():
    from LeftAtriumSegLib.pipeline import Segmenter

    return Segmenter.load(device="cpu")
