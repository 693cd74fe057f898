"""Reading and checking input images; writing label maps and Slicer segmentation files.

Every write goes to a temporary file in the target folder that is then renamed, so an
interrupted run never leaves a half-written output under its final name.
"""

from __future__ import annotations

import gzip
import os
import tempfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import slicerio

from .errors import InputImageError

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
SEGMENTATION_SUFFIX = ".seg.nrrd"
MIN_SPACING_MM, MAX_SPACING_MM = 0.05, 20.0

# Terminology of the left atrium as Slicer writes it (DICOM master list, SNOMED CT codes).
LEFT_ATRIUM_SEGMENT = {
    "id": "left_atrium",
    "name": "Left atrium",
    "color": [0.8, 0.26, 0.23],
    "terminology": {
        "contextName": "Segmentation category and type - DICOM master list",
        "category": ["SCT", "123037004", "Anatomical Structure"],
        "type": ["SCT", "82471001", "Left atrium"],
        "anatomicContextName": "Anatomic codes - DICOM master list",
    },
}
# The same entry as a Slicer segment tag value (vtkSegment.GetTerminologyEntryTagName()).
LEFT_ATRIUM_TERMINOLOGY = (
    "Segmentation category and type - DICOM master list~SCT^123037004^Anatomical Structure"
    "~SCT^82471001^Left atrium~^^~Anatomic codes - DICOM master list~^^~^^"
)


def case_name(path: str | Path) -> str:
    """File name without its image suffix: ``la_003.nii.gz`` -> ``la_003``."""
    name = Path(path).name
    for suffix in (SEGMENTATION_SUFFIX, *IMAGE_SUFFIXES):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def find_images(inputs: list[str | Path]) -> list[Path]:
    """Expand folders into the image files they hold (sorted); files are kept as given."""
    images: list[Path] = []
    for entry in map(Path, inputs):
        if entry.is_dir():
            images.extend(sorted(p for p in entry.iterdir() if p.name.lower().endswith(IMAGE_SUFFIXES)))
        else:
            images.append(entry)
    return images


def check_image(image: sitk.Image, path: str | Path) -> None:
    """Raise ``InputImageError`` unless ``image`` is a usable 3D scalar volume."""
    if image.GetDimension() != 3:
        raise InputImageError(f"{path}: image is {image.GetDimension()}D, a 3D volume is needed")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputImageError(f"{path}: image has {image.GetNumberOfComponentsPerPixel()} components per voxel, a scalar volume is needed")
    size = image.GetSize()
    if min(size) < 2:
        raise InputImageError(f"{path}: image of size {size} is a single slice, a 3D volume is needed")
    spacing = image.GetSpacing()
    if not all(MIN_SPACING_MM <= s <= MAX_SPACING_MM for s in spacing):
        raise InputImageError(
            f"{path}: voxel spacing {tuple(round(s, 4) for s in spacing)} mm is outside "
            f"{MIN_SPACING_MM}-{MAX_SPACING_MM} mm"
        )
    voxels = sitk.GetArrayViewFromImage(image)
    if not np.isfinite(voxels).all():
        raise InputImageError(f"{path}: image contains NaN or infinite intensities")
    if voxels.min() == voxels.max():
        raise InputImageError(f"{path}: image has constant intensity, there is nothing to segment")


def _check_gzip_stream(path: Path) -> None:
    """ITK reads a truncated .gz silently, filling the rest with zeros: decompress it once to
    find out."""
    try:
        with gzip.open(path, "rb") as stream:
            while stream.read(1 << 22):
                pass
    except (OSError, EOFError, zlib.error) as error:
        raise InputImageError(f"{path}: file is truncated or corrupt ({error})") from None


def read_image(path: str | Path) -> sitk.Image:
    """Read and check a 3D image file; every failure is an ``InputImageError`` naming the file."""
    path = Path(path)
    if not path.exists():
        raise InputImageError(f"{path}: file not found")
    if path.is_dir():
        raise InputImageError(f"{path}: is a folder, not an image file")
    if path.name.lower().endswith(".gz"):
        _check_gzip_stream(path)
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as error:
        # ITK's message is several lines; its first meaningful one is enough for the user.
        reason = next((line.strip() for line in str(error).splitlines() if "ERROR" in line or "Could not" in line), "unreadable")
        raise InputImageError(f"{path}: cannot read image (corrupt or unsupported format: {reason[:160]})") from None
    check_image(image, path)
    return image


@contextmanager
def atomic_output(path: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it to ``path``.

    Refuses to replace an existing file unless ``overwrite``. On failure the temporary file
    is removed and ``path`` is untouched.
    """
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path}: output exists (use --overwrite to replace it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=".partial-", suffix="-" + path.name, dir=path.parent)
    os.close(handle)
    try:
        yield Path(temporary)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def ijk_to_lps(image: sitk.Image) -> np.ndarray:
    """4x4 matrix from voxel index (i, j, k) to physical LPS coordinates in mm."""
    matrix = np.eye(4)
    matrix[:3, :3] = np.array(image.GetDirection()).reshape(3, 3) * np.array(image.GetSpacing())
    matrix[:3, 3] = image.GetOrigin()
    return matrix


def write_label_map(mask: np.ndarray, reference: sitk.Image, path: Path, overwrite: bool = False) -> None:
    """Write a ``(Z, Y, X)`` 0/1 mask as uint8 on ``reference``'s grid (NIfTI, NRRD, ...)."""
    label_map = sitk.GetImageFromArray(mask.astype(np.uint8))
    label_map.CopyInformation(reference)
    with atomic_output(path, overwrite) as temporary:
        sitk.WriteImage(label_map, str(temporary), useCompression=True)


def write_segmentation(mask: np.ndarray, reference: sitk.Image, path: Path, overwrite: bool = False) -> None:
    """Write a ``(Z, Y, X)`` mask as a Slicer ``.seg.nrrd`` with one "Left atrium" segment."""
    segmentation = slicerio.create_segmentation(mask.shape[::-1], ijk_to_lps(reference))
    slicerio.add_segment(segmentation, mask.transpose(2, 1, 0).astype(bool), dict(LEFT_ATRIUM_SEGMENT))
    segmentation["segments"][0]["status"] = "completed"
    with atomic_output(path, overwrite) as temporary:
        slicerio.write_segmentation(str(temporary), segmentation)
