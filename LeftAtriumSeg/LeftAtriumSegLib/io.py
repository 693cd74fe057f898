"""Reading and checking input images; writing label maps and Slicer segmentation files.

Every write goes to a temporary file in the target folder that is then renamed, so an
interrupted run never leaves a half-written output under its final name.
"""

from __future__ import annotations

import csv
import gzip
import os
import socket
import tempfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import slicerio

from .errors import InputImageError, LeftAtriumSegError

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
NIFTI_SUFFIXES = (".nii.gz", ".nii")
SEGMENTATION_SUFFIX = ".seg.nrrd"
MIN_SPACING_MM, MAX_SPACING_MM = 0.05, 20.0
MAX_VOXELS = 2e8  # about 800 MB as float32; a 512 x 512 x 300 scan has 7.9e7
MIN_DISTINCT_INTENSITIES = 8  # fewer is a label map or a mask, not an MRI

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


@dataclass(frozen=True)
class CaseInput:
    """One case to segment: an image file, or a DICOM folder and the series in it."""

    case: str
    path: Path
    series_uid: str | None = None


def dicom_series_ids(folder: Path) -> tuple[str, ...]:
    """Series instance UIDs of the DICOM files directly in ``folder`` (none: empty)."""
    # GDCM warns on standard error for every folder without DICOM files; that is no news here.
    warnings_were_on = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        return tuple(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)))
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(warnings_were_on)


def find_cases(inputs: list[str | Path], series_uid: str | None = None) -> list[CaseInput]:
    """Turn files and folders into cases.

    A folder holding DICOM files is one case (named after the folder); any other folder
    contributes the image files directly inside it, sorted.
    """
    cases: list[CaseInput] = []
    for entry in map(Path, inputs):
        if entry.is_dir():
            if dicom_series_ids(entry):
                cases.append(CaseInput(entry.name, entry, series_uid))
            else:
                cases.extend(CaseInput(case_name(p), p) for p in sorted(entry.iterdir())
                             if p.is_file() and p.name.lower().endswith(IMAGE_SUFFIXES))
        else:
            cases.append(CaseInput(case_name(entry), entry))
    return cases


def read_manifest(path: str | Path) -> list[CaseInput]:
    """Cases from a CSV with an ``image`` column (file or DICOM folder, relative to the CSV)
    and optional ``case`` and ``series_uid`` columns."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise InputImageError(f"{path}: cannot read manifest ({error})") from None
    if not rows or "image" not in rows[0]:
        raise InputImageError(f"{path}: manifest needs a header row with an 'image' column")
    cases = []
    for row in rows:
        image = (path.parent / row["image"]).resolve()
        cases.append(CaseInput(row.get("case") or case_name(image), image, row.get("series_uid") or None))
    return cases


def check_image(image: sitk.Image, path: str | Path) -> None:
    """Raise ``InputImageError`` unless ``image`` is a usable 3D scalar MRI volume."""
    _check_header(image.GetSize(), image.GetNumberOfComponentsPerPixel(), Path(path))
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
    distinct = len(np.unique(voxels[::3, ::3, ::3]))
    if distinct < MIN_DISTINCT_INTENSITIES:
        raise InputImageError(f"{path}: image has only {distinct} distinct intensities: a label map, not an MRI?")


def _check_gzip_stream(path: Path) -> None:
    """ITK reads a truncated .gz silently, filling the rest with zeros: decompress it once to
    find out."""
    try:
        with gzip.open(path, "rb") as stream:
            while stream.read(1 << 22):
                pass
    except (OSError, EOFError, zlib.error) as error:
        raise InputImageError(f"{path}: file is truncated, corrupt or not gzip-compressed as its name says ({error})") from None


def _check_nifti_voxels_finite(path: Path) -> None:
    """ITK's NIfTI reader sets NaN and infinite voxels to 0 without a word: look at the voxels
    as stored."""
    import nibabel  # only floating-point NIfTI files need it

    try:
        stored = np.asanyarray(nibabel.load(path).dataobj.get_unscaled())
    except (OSError, EOFError, ValueError, nibabel.filebasedimages.ImageFileError,
            nibabel.spatialimages.HeaderDataError) as error:  # the last two derive from Exception only
        raise InputImageError(f"{path}: cannot read the voxels as stored ({error})") from None
    if not np.isfinite(stored).all():
        raise InputImageError(f"{path}: image contains NaN or infinite intensities")


def _itk_reason(error: RuntimeError) -> str:
    """ITK's messages run over several lines; the first meaningful one is enough."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return next((line for line in lines if "ERROR" in line or "Could not" in line), lines[-1] if lines else "unreadable")[:160]


def _check_header(size: tuple[int, ...], components: int, path: Path) -> None:
    """Checks that need only the header, made before any voxel is read."""
    if len(size) != 3:
        raise InputImageError(f"{path}: image is {len(size)}D, a 3D volume is needed")
    if components != 1:
        raise InputImageError(f"{path}: image has {components} components per voxel, a scalar volume is needed")
    if min(size) < 2:
        raise InputImageError(f"{path}: image of size {size} is a single slice, a 3D volume is needed")
    if np.prod(size, dtype=float) > MAX_VOXELS:
        raise InputImageError(f"{path}: image of size {size} is larger than {MAX_VOXELS:.0e} voxels")


def _check_file_is_there_and_whole(path: Path) -> None:
    if not path.exists():
        raise InputImageError(f"{path}: file not found")
    if path.name.lower().endswith(".gz"):
        _check_gzip_stream(path)


def read_image(path: str | Path) -> sitk.Image:
    """Read and check a 3D image file; every failure is an ``InputImageError`` naming the file."""
    path = Path(path)
    if path.is_dir():
        raise InputImageError(f"{path}: is a folder without DICOM files, not an image file")
    _check_file_is_there_and_whole(path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
        _check_header(reader.GetSize(), reader.GetNumberOfComponents(), path)
        image = reader.Execute()
    except RuntimeError as error:
        raise InputImageError(f"{path}: cannot read image (corrupt or unsupported format: {_itk_reason(error)})") from None
    if path.name.lower().endswith(NIFTI_SUFFIXES) and image.GetPixelID() in (sitk.sitkFloat32, sitk.sitkFloat64):
        _check_nifti_voxels_finite(path)
    check_image(image, path)
    return image


def read_mask(path: str | Path) -> sitk.Image:
    """Read a 3D mask, zero outside and one value inside (NIfTI, a one-layer ``.seg.nrrd``, ...);
    every failure is an ``InputImageError`` naming the file."""
    path = Path(path)
    _check_file_is_there_and_whole(path)
    try:
        mask = sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise InputImageError(f"{path}: cannot read mask (corrupt or unsupported format: {_itk_reason(error)})") from None
    if mask.GetDimension() != 3:  # a .seg.nrrd with overlapping segments has layers first
        raise InputImageError(f"{path}: mask is {mask.GetDimension()}D (a segmentation with several layers?), "
                              "a 3D mask is needed")
    # Callers take every non-zero voxel as atrium, which would turn an MRI given by mistake,
    # or a map of several structures, into one huge "atrium".
    values = sitk.GetArrayViewFromImage(mask)
    labelled = values[values != 0]
    if labelled.size and (labelled != labelled[0]).any():
        raise InputImageError(f"{path}: is not a mask: it holds {len(np.unique(labelled))} different non-zero "
                              "values (an image, or a map of several labels?); a mask of the left atrium alone is needed")
    return mask


def read_dicom_series(folder: Path, series_uid: str | None = None) -> sitk.Image:
    """Read and check one DICOM series from ``folder``; with several, ``series_uid`` chooses."""
    series = dicom_series_ids(folder)
    if not series:
        raise InputImageError(f"{folder}: is a folder without DICOM files, not an image file")
    if series_uid is None and len(series) > 1:
        raise InputImageError(f"{folder}: holds {len(series)} DICOM series ({', '.join(series)}); choose one with --series")
    if series_uid is not None and series_uid not in series:
        raise InputImageError(f"{folder}: has no DICOM series {series_uid} (found {', '.join(series)})")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series_uid or series[0]))
    try:
        image = reader.Execute()
    except RuntimeError as error:
        raise InputImageError(f"{folder}: cannot read DICOM series ({_itk_reason(error)})") from None
    check_image(image, folder)
    return image


def read_case(case: CaseInput) -> sitk.Image:
    """The image of a case, from a file or a DICOM folder."""
    if case.path.is_dir():  # read_dicom_series scans the folder once and says if it holds none
        return read_dicom_series(case.path, case.series_uid)
    return read_image(case.path)


def _partial_prefix() -> str:
    return f".partial-{socket.gethostname()}-{os.getpid()}-"


def create_output_folder(folder: Path) -> None:
    """Make ``--output-dir`` once, before any case: one clear error instead of one per case."""
    if folder.exists() and not folder.is_dir():
        raise LeftAtriumSegError(f"{folder}: --output-dir exists and is not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise LeftAtriumSegError(f"{folder}: cannot create the output folder ({error.strerror})") from None


def refuse_existing_output(path: Path, overwrite: bool = False) -> None:
    """Raise unless ``path`` is free to write: the user's files are replaced only when asked."""
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path}: output exists (use --overwrite to replace it)")


@contextmanager
def atomic_output(path: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it to ``path``.

    Refuses to replace an existing file unless ``overwrite``. On failure the temporary file
    is removed and ``path`` is untouched. A process killed meanwhile leaves only the hidden
    temporary file, which ``remove_stale_partials`` clears on the next run.
    """
    refuse_existing_output(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=_partial_prefix(), suffix="-" + path.name, dir=path.parent)
    os.close(handle)
    try:
        yield Path(temporary)
        os.chmod(temporary, 0o666 & ~_umask())  # mkstemp makes it private; outputs are ordinary files
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def remove_stale_partials(folder: Path) -> list[Path]:
    """Delete temporary files left in ``folder`` by killed processes of this host.

    Files of live processes (other shards writing to the same folder) and of other hosts
    are left alone. Returns what was removed.
    """
    removed: list[Path] = []
    if os.name != "posix" or not folder.is_dir():  # os.kill(pid, 0) only probes on POSIX
        return removed
    host_prefix = f".partial-{socket.gethostname()}-"
    for path in folder.glob(host_prefix + "*"):
        pid = path.name[len(host_prefix):].split("-", 1)[0]
        if pid.isdigit() and not _process_alive(int(pid)):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
