"""Reading and checking input images; writing label maps and Slicer segmentation files.

Every write goes to a temporary file in the target folder, is read back and compared with what
was meant to be written, and only then renamed: an interrupted run or a full disk never leaves a
half-written output under its final name.
"""

from __future__ import annotations

import csv
import errno
import gzip
import hashlib
import math
import os
import re
import shutil
import socket
import struct
import tempfile
import threading
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from io import BytesIO, StringIO
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .errors import InputImageError, LeftAtriumSegError
from .postprocessing import bounding_box

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
NIFTI_SUFFIXES = (".nii.gz", ".nii")
SEGMENTATION_SUFFIX = ".seg.nrrd"
MIN_SPACING_MM, MAX_SPACING_MM = 0.05, 20.0
MAX_VOXELS = 2e8  # about 800 MB as float32; a 512 x 512 x 300 scan has 7.9e7
MIN_DISTINCT_INTENSITIES = 8  # fewer is a label map or a mask, not an MRI
# An adult left atrium spans 30-70 mm along every axis: a volume thinner than this along any
# axis cannot hold one (a slab of a few slices, say).
MIN_EXTENT_MM = 20.0
# A file name may have 255 bytes; an output's temporary name adds a prefix of about 60 to the case's.
MAX_CASE_NAME_BYTES = 150

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
    """Case name of a file: its name without the image suffix and surrounding spaces.

    ``la_003.nii.gz`` -> ``la_003``; ``.seg.nrrd`` counts as one suffix, and a name without a
    known suffix loses only its last extension. A stray space (`` la_003.nii.gz``) would otherwise
    give a name no output file can take, and the scan, its mask and its label would not pair up.
    """
    name = Path(path).name
    for suffix in (SEGMENTATION_SUFFIX, *IMAGE_SUFFIXES):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)].strip()
    return Path(name).stem.strip()


def check_case_name(name: str, source: str | Path) -> str:
    """Check that a case name can name an output file inside the output folder.

    A case named ``../x`` or ``/abs/x`` would write outside it.

    Parameters
    ----------
    name : str
        The case name.
    source : str or Path
        Where the name comes from (a manifest, say), for the error message.

    Returns
    -------
    str
        ``name``, unchanged.

    Raises
    ------
    InputImageError
        Naming ``source``, for an empty name, a name starting with ``.`` (a hidden file, which
        folders are read without), a path separator, a character that does not print on one line
        (``str.isprintable``: a line break would split the case's line of output, a direction
        mark would show it as another name), surrounding spaces, or a first ``=``, ``+``, ``-`` or
        ``@`` (a spreadsheet's formula).
    """
    if not name or name.startswith(".") or re.search(r"[/\\]", name) or not name.isprintable() or name != name.strip():
        raise InputImageError(f"{source}: case name {name!r} cannot name a file in the output folder "
                              "(no path separators, control characters, leading '.' or surrounding spaces)")
    if name[0] in "=+-@":
        raise InputImageError(f"{source}: case name {name!r} starts with {name[0]!r}: a spreadsheet opening "
                              "volumes.csv would run it as a formula")
    if len(name.encode("utf-8")) > MAX_CASE_NAME_BYTES:
        raise InputImageError(f"{source}: case name {name[:40]!r}... is {len(name.encode('utf-8'))} bytes long; "
                              f"output files need it under {MAX_CASE_NAME_BYTES + 1} (a shorter name, or a --manifest 'case')")
    return name


@dataclass(frozen=True)
class CaseInput:
    """One case to segment: an image file, or a DICOM folder and the series in it.

    Attributes
    ----------
    case : str
        Case name; it names the case's output files.
    path : Path
        Image file or DICOM folder.
    series_uid : str or None
        Series instance UID to read from a DICOM folder that holds several; None for a file or
        a folder with one series.
    """

    case: str
    path: Path
    series_uid: str | None = None


_WARNING_SWITCH = threading.Lock()


def dicom_series_ids(folder: Path) -> tuple[str, ...]:
    """Series instance UIDs of the DICOM files directly in ``folder``.

    Returns
    -------
    tuple of str
        One UID per series; empty where the folder holds no DICOM files.
    """
    # GDCM warns on standard error for every folder without DICOM files; that is no news here. The
    # switch is the whole process's: threads segmenting cases at once take turns at it.
    with _WARNING_SWITCH:
        warnings_were_on = sitk.ProcessObject.GetGlobalWarningDisplay()
        sitk.ProcessObject.SetGlobalWarningDisplay(False)
        try:
            return tuple(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)))
        finally:
            sitk.ProcessObject.SetGlobalWarningDisplay(warnings_were_on)


def _hidden(path: Path) -> bool:
    """A hidden file: macOS leaves ``._la_003.nii.gz`` (its metadata) beside every file copied onto
    some drives; it is not a scan."""
    return path.name.startswith(".")


def find_cases(inputs: list[str | Path], series_uid: str | None = None) -> list[CaseInput]:
    """Turn files and folders into cases.

    A folder holding DICOM files is one case (named after the folder); any other folder
    contributes every entry directly inside it whose name has an image suffix, sorted, including
    those that cannot be read (a dangling link, say): reading them fails with the reason, so that
    they get a row instead of vanishing.

    Parameters
    ----------
    inputs : list of str or Path
        Image files and folders, in the order given.
    series_uid : str, optional
        The series to read from each DICOM folder (``CaseInput.series_uid``).

    Returns
    -------
    list of CaseInput
    """
    cases: list[CaseInput] = []
    for entry in map(Path, inputs):
        if entry.is_dir():
            if dicom_series_ids(entry):
                cases.append(CaseInput(entry.name.strip(), entry, series_uid))
            else:
                # A .seg.nrrd is a segmentation (segment's own output, where a folder is both), not a scan.
                cases.extend(CaseInput(case_name(p), p) for p in sorted(entry.iterdir())
                             if p.name.lower().endswith(IMAGE_SUFFIXES) and not p.is_dir() and not _hidden(p)
                             and not p.name.lower().endswith(SEGMENTATION_SUFFIX))
        else:
            cases.append(CaseInput(case_name(entry), entry))
    return cases


@dataclass(frozen=True)
class CsvTable:
    """A CSV file as a person or a spreadsheet made it.

    columns : the header row's names
    rows : one dict per row, ``column -> cell``; a row shorter than the header reads as blank cells,
        and cells beyond the header are left out
    lines : the line of the file each row starts on, for messages
    """

    columns: tuple[str, ...]
    rows: list[dict[str, str]]
    lines: list[int]


def read_csv(path: Path) -> CsvTable:
    """Read a CSV file (UTF-8, a byte-order mark allowed as spreadsheets write one; blank lines and
    rows of empty cells skipped; spaces around the header's names dropped); no columns and no rows
    for an empty file.

    Cells are separated by commas, or by semicolons or tabs where the first line that is not blank
    has no comma:
    spreadsheets set to a language that writes decimal commas save CSV with semicolons.

    Raises
    ------
    LeftAtriumSegError
        Naming the file, for one that is not there or is a folder, one that cannot be read as CSV,
        or a header that names a column twice (which of the two would be meant?).
    """
    if not Path(path).exists() or Path(path).is_dir():  # a pipe, <(...), is neither a file nor a folder
        raise LeftAtriumSegError(f"{path}: {'is a folder, not a file' if Path(path).is_dir() else 'file not found'}")
    rows, lines, header, last_line = [], [], None, 0
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            text = handle.read()  # whole, not seeking back: a manifest may come through a pipe, <(...)
        first = next((line for line in text.splitlines() if line.strip()), "")
        delimiter = next((mark for mark in ",;\t" if mark in first), ",")
        reader = csv.reader(StringIO(text, newline=""), delimiter=delimiter)
        for cells in reader:
            first_line, last_line = last_line + 1, reader.line_num
            if not any(cell.strip() for cell in cells):  # a blank line, or a spreadsheet's row of empty cells
                continue
            if header is None:
                header = tuple(cell.strip() for cell in cells)
                continue
            rows.append(dict(zip(header, cells + [""] * (len(header) - len(cells)))))
            lines.append(first_line)
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise LeftAtriumSegError(f"{path}: cannot read as CSV ({error})") from None
    named = [column for column in header or () if column]
    twice = sorted({column for column in named if named.count(column) > 1})
    if twice:
        raise LeftAtriumSegError(f"{path}: the header names the column {twice[0]!r} twice; which is meant?")
    return CsvTable(header or (), rows, lines)


def read_manifest(path: str | Path) -> list[CaseInput]:
    """Cases from a CSV manifest.

    The CSV (UTF-8, with a header row) has an ``image`` column (file or DICOM folder, relative to
    the CSV) and optional ``case`` and ``series_uid`` columns; a row without a case name is named
    after its image.

    Returns
    -------
    list of CaseInput
        One per row, in the file's order.

    Raises
    ------
    LeftAtriumSegError
        For a file that cannot be read (``read_csv``), no row or no ``image`` column, or a case
        name that cannot name an output file (``check_case_name``).
    """
    path = Path(path)
    table = read_csv(path)
    if "image" not in table.columns:
        raise InputImageError(f"{path}: manifest needs a header row with an 'image' column")
    if not table.rows:
        raise InputImageError(f"{path}: manifest lists no image (a header row and nothing under it)")
    cases = []
    for line, row in zip(table.lines, table.rows):
        if not row["image"].strip():
            raise InputImageError(f"{path}: line {line}: no image")
        if "\0" in row["image"]:
            raise InputImageError(f"{path}: line {line}: the image's name holds a NUL character")
        # Not resolved: a link is named as the manifest names it, as a folder's link is.
        image = (path.parent / row["image"]).absolute()
        name = check_case_name(row.get("case") or case_name(image), f"{path}: line {line}")
        cases.append(CaseInput(name, image, row.get("series_uid") or None))
    return cases


def check_image(image: sitk.Image, path: str | Path) -> None:
    """Check that ``image`` is a usable 3D scalar MRI volume.

    Parameters
    ----------
    image : SimpleITK.Image
    path : str or Path
        Where it was read from, for the error message.

    Raises
    ------
    InputImageError
        For an image that is not 3D or not scalar, a single slice, more than ``MAX_VOXELS``
        voxels, a voxel spacing outside ``MIN_SPACING_MM``-``MAX_SPACING_MM`` mm, axes not at
        right angles (direction cosines not orthonormal), an extent
        under ``MIN_EXTENT_MM`` mm along an axis (too thin to hold a left atrium), NaN or
        infinite intensities, constant intensity, or fewer than ``MIN_DISTINCT_INTENSITIES``
        distinct intensities (a label map or a mask, not an MRI).
    """
    _check_header(image.GetSize(), image.GetNumberOfComponentsPerPixel(), Path(path))
    spacing = image.GetSpacing()
    if not all(MIN_SPACING_MM <= s <= MAX_SPACING_MM for s in spacing):
        raise InputImageError(
            f"{path}: voxel spacing {tuple(round(s, 4) for s in spacing)} mm is outside "
            f"{MIN_SPACING_MM}-{MAX_SPACING_MM} mm"
        )
    direction = np.array(image.GetDirection()).reshape(3, 3)
    lengths = np.linalg.norm(direction, axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):  # an axis of length 0 fails the test below
        cosines = np.abs(direction.T @ direction / np.outer(lengths, lengths) - np.eye(3))
    if cosines.max() > 1e-4:
        # The volume of a voxel would not be the product of its spacings, and NIfTI cannot store
        # the grid (ITK's writer makes it orthogonal: the mask would land elsewhere).
        i, j = sorted(np.unravel_index(cosines.argmax(), cosines.shape))
        raise InputImageError(f"{path}: its voxel axes {i + 1} and {j + 1} meet at "
                              f"{np.degrees(np.arccos(min(cosines[i, j], 1.0))):.1f} degrees, not 90 (a sheared grid, "
                              "not a scan's)")
    if np.abs(lengths - 1).max() > 1e-4:
        raise InputImageError(f"{path}: its direction cosines are not unit vectors (lengths "
                              f"{', '.join(f'{length:.4f}' for length in lengths)})")
    extent_mm = [n * s for n, s in zip(image.GetSize(), spacing)]
    if min(extent_mm) < MIN_EXTENT_MM:
        raise InputImageError(
            f"{path}: image covers only {min(extent_mm):.1f} mm along one axis (size {image.GetSize()}, spacing "
            f"{tuple(round(s, 4) for s in spacing)} mm): too thin to hold a left atrium (at least {MIN_EXTENT_MM:g} mm)")
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
    _check_file_is_there(path)
    if path.name.lower().endswith(".gz"):
        _check_gzip_stream(path)


def _check_file_is_there(path: Path) -> None:
    if not path.exists():
        if path.is_symlink():
            try:
                path.resolve(strict=True)
            except RuntimeError:  # what pathlib raises for a loop
                raise InputImageError(f"{path}: symbolic link loop") from None
            except OSError as error:
                if error.errno == errno.ELOOP:
                    raise InputImageError(f"{path}: symbolic link loop") from None
            raise InputImageError(f"{path}: dangling symbolic link (to {os.readlink(path)}, which does not exist)")
        raise InputImageError(f"{path}: file not found")
    if not path.is_file():
        raise InputImageError(f"{path}: not a regular file")


def _spacing_problem(spacing_mm) -> str | None:
    values = [float(s) for s in spacing_mm]
    if all(math.isfinite(s) and MIN_SPACING_MM <= s <= MAX_SPACING_MM for s in values):
        return None
    return f"{tuple(round(s, 4) for s in values)} mm (each must be {MIN_SPACING_MM}-{MAX_SPACING_MM} mm)"


# NIfTI-1 and NIfTI-2 header fields that give the voxel size and position: (offset, type, count),
# from the format's definitions (nifti1.h, nifti2.h).
_NIFTI_FIELDS = {
    348: {"dim": (40, "h", 8), "pixdim": (76, "f", 8), "qform_code": (252, "h", 1), "sform_code": (254, "h", 1),
          "quatern": (256, "f", 6), "srow": (280, "f", 12)},
    540: {"dim": (16, "q", 8), "pixdim": (104, "d", 8), "qform_code": (344, "i", 1), "sform_code": (348, "i", 1),
          "quatern": (352, "d", 6), "srow": (400, "d", 12)},
}


def _nifti_header(path: Path) -> dict[str, np.ndarray]:
    """The voxel-size and position fields of a NIfTI-1 or NIfTI-2 header, without nibabel (whose
    import costs ``segment`` a tenth of its time)."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rb") as handle:
        head = handle.read(540)
    for size, fields in _NIFTI_FIELDS.items():
        for order in "<>":
            if len(head) >= size and struct.unpack(order + "i", head[:4])[0] == size:
                return {name: np.array(struct.unpack_from(f"{order}{count}{kind}", head, offset), dtype=float)
                        for name, (offset, kind, count) in fields.items()}
    if opener is open and head[:2] == b"\x1f\x8b":  # gzip's magic bytes under a name without .gz (a link named .nii)
        raise InputImageError(f"{path}: is gzip-compressed, though its name ends in {path.suffix}; name it .nii.gz")
    raise InputImageError(f"{path}: cannot read image (not a NIfTI header: it does not start with 348 or 540)")


def _qform_affine(header: dict[str, np.ndarray]) -> np.ndarray:
    """The 3 x 4 voxel-to-world matrix (RAS, mm) of a NIfTI header's qform (the quaternion, the voxel
    size and the qfac sign of pixdim[0]), as the NIfTI-1 standard defines it."""
    b, c, d, *offset = header["quatern"]
    a = np.sqrt(max(1.0 - (b * b + c * c + d * d), 0.0))
    rotation = np.array([[a * a + b * b - c * c - d * d, 2 * (b * c - a * d), 2 * (b * d + a * c)],
                         [2 * (b * c + a * d), a * a + c * c - b * b - d * d, 2 * (c * d - a * b)],
                         [2 * (b * d - a * c), 2 * (c * d + a * b), a * a + d * d - c * c - b * b]])
    qfac = -1.0 if header["pixdim"][0] < 0 else 1.0
    spacing = header["pixdim"][1:4] * np.array([1.0, 1.0, qfac])
    return np.column_stack([rotation * spacing, offset])


def _check_nifti_header(path: Path) -> None:
    """Every voxel-size field of a NIfTI header ITK may use must be sane: ITK reads a zero or NaN
    ``pixdim`` as 1 mm and ignores an sform whose scales it dislikes, without a word, and a volume
    measured on the wrong voxel size looks plausible."""
    try:
        header = _nifti_header(path)
    except (OSError, EOFError, zlib.error) as error:
        raise InputImageError(f"{path}: cannot read image ({error.strerror if isinstance(error, OSError) and error.strerror else error})") from None
    dimensions = int(header["dim"][0])
    sizes = header["dim"][1 : 1 + dimensions]
    if not 1 <= dimensions <= 7 or (sizes < 1).any():  # what niftilib refuses, printing its own line first
        raise InputImageError(f"{path}: the header's dimensions {tuple(int(n) for n in header['dim'])} are not an "
                              "image's (dim[0], the number of axes, must be 1-7, and each size at least 1)")
    pixdim = header["pixdim"][1 : 1 + min(dimensions, 3)]
    problem = _spacing_problem(pixdim)
    if problem:
        raise InputImageError(f"{path}: the header's voxel size (pixdim) is {problem}")
    if header["qform_code"][0] > 0 and not np.isfinite(header["quatern"]).all():
        raise InputImageError(f"{path}: the header's qform holds NaN or infinite values")
    if header["sform_code"][0] > 0 and dimensions >= 3:
        sform = header["srow"].reshape(3, 4)
        if not np.isfinite(sform).all():
            raise InputImageError(f"{path}: the header's sform holds NaN or infinite values")
        sform_spacing = np.linalg.norm(sform[:, :3], axis=0)
        problem = _spacing_problem(sform_spacing)
        if problem:
            raise InputImageError(f"{path}: the header's sform gives a voxel size of {problem}")
        if not np.allclose(sform_spacing, pixdim, rtol=0.01):
            raise InputImageError(
                f"{path}: the header states two voxel sizes, {tuple(round(float(s), 4) for s in pixdim)} mm (pixdim) and "
                f"{tuple(round(float(s), 4) for s in sform_spacing)} mm (sform); which one is the scan's?")
        if header["qform_code"][0] > 0:
            qform = _qform_affine(header)
            # ITK places the scan by one of them, other software by the other: the mask would lie
            # elsewhere for each.
            if not (np.allclose(qform[:, :3], sform[:, :3], atol=1e-3) and np.allclose(qform[:, 3], sform[:, 3], atol=0.1)):
                shift = float(np.abs(qform[:, 3] - sform[:, 3]).max())
                raise InputImageError(f"{path}: the header states two positions of the scan (qform and sform differ, "
                                      f"up to {shift:.1f} mm at the origin, or in their axes); which one is the scan's?")


def _check_metaimage_header(path: Path) -> None:
    """ITK reads a negative MetaImage ``ElementSpacing`` as its absolute value; a header that states
    one is damaged."""
    with open(path, "rb") as handle:
        head = handle.read(1 << 16).decode("latin-1")
    match = re.search(r"^\s*ElementSpacing\s*=\s*(.*)$", head, re.MULTILINE)
    if match is None:
        return
    try:
        spacing = [float(part) for part in match.group(1).split()]
    except ValueError:
        raise InputImageError(f"{path}: unreadable ElementSpacing {match.group(1)!r}") from None
    problem = _spacing_problem(spacing)
    if problem:
        raise InputImageError(f"{path}: the header's ElementSpacing is {problem}")


def read_image(path: str | Path) -> sitk.Image:
    """Read and check a 3D image file.

    Besides ITK's own checks and ``check_image``, it refuses what ITK would read without a word:
    a truncated ``.gz`` (read as zeros), a NIfTI or MetaImage header with an impossible voxel size
    (a zero or NaN ``pixdim`` is read as 1 mm), NaN or infinite voxels in a floating-point NIfTI
    file (read as 0).

    Parameters
    ----------
    path : str or Path
        NIfTI, NRRD or MetaImage file (``IMAGE_SUFFIXES``).

    Returns
    -------
    SimpleITK.Image

    Raises
    ------
    InputImageError
        For every failure, naming the file.
    """
    path = Path(path)
    if path.is_dir():
        raise InputImageError(f"{path}: is a folder without DICOM files, not an image file")
    _check_file_is_there_and_whole(path)
    if path.name.lower().endswith(NIFTI_SUFFIXES):
        _check_nifti_header(path)
    elif path.name.lower().endswith((".mha", ".mhd")):
        _check_metaimage_header(path)
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


def _read_whole_file(path: Path, what: str) -> sitk.Image:
    """ITK's reading of a file checked to be there and whole; its failure named."""
    _check_file_is_there_and_whole(path)
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise InputImageError(f"{path}: cannot read {what} (corrupt or unsupported format: {_itk_reason(error)})") from None


def read_mask(path: str | Path) -> sitk.Image:
    """Read a 3D mask: zero outside and one value inside (NIfTI, a one-layer ``.seg.nrrd``, ...).

    Returns
    -------
    SimpleITK.Image
        uint8, 1 where the file holds its one non-zero value (negative ones too), 0 elsewhere, on
        the file's grid.

    Raises
    ------
    InputImageError
        For every failure, naming the file; among them a mask that is not 3D (or a segmentation with
        several layers) or holds several non-zero values (an image given by mistake, or a map of
        several structures, which would count as one huge atrium).
    """
    path = Path(path)
    mask = _read_whole_file(path, "mask")
    # A .seg.nrrd with overlapping segments has layers: SimpleITK reads them as 4D or as components.
    if path.name.lower().endswith(SEGMENTATION_SUFFIX) and (mask.GetDimension() != 3 or mask.GetNumberOfComponentsPerPixel() != 1):
        raise InputImageError(f"{path}: is a segmentation with several layers (overlapping segments), "
                              "a 3D mask of the left atrium alone is needed")
    _check_header(mask.GetSize(), mask.GetNumberOfComponentsPerPixel(), path)
    # Every non-zero voxel is atrium, which would turn an MRI given by mistake, or a map of
    # several structures, into one huge "atrium".
    values = sitk.GetArrayViewFromImage(mask)
    labelled = values[values != 0]
    if labelled.size and (labelled != labelled[0]).any():
        raise InputImageError(f"{path}: is not a mask: it holds {len(np.unique(labelled))} different non-zero "
                              "values (an image, or a map of several labels?); a mask of the left atrium alone is needed")
    return mask != 0


def read_probability_map(path: str | Path) -> sitk.Image:
    """Read a 3D map of probabilities, as cross-validation writes them (``probabilities/``).

    Raises
    ------
    InputImageError
        For every failure, naming the file: unreadable, truncated, not 3D scalar, NaN or infinite
        values, or values outside 0-1 (an image or logits given by mistake).
    """
    path = Path(path)
    probability_map = _read_whole_file(path, "probability map")
    _check_header(probability_map.GetSize(), probability_map.GetNumberOfComponentsPerPixel(), path)
    if path.name.lower().endswith(NIFTI_SUFFIXES):
        _check_nifti_voxels_finite(path)
    values = sitk.GetArrayViewFromImage(probability_map)
    if not np.isfinite(values).all():
        raise InputImageError(f"{path}: probability map contains NaN or infinite values")
    if values.min() < 0 or values.max() > 1:
        raise InputImageError(f"{path}: values {values.min():g} to {values.max():g} lie outside 0-1: not a probability map")
    if np.all((values == 0) | (values == 1)):  # every threshold would cut it alike
        raise InputImageError(f"{path}: holds only 0 and 1: a mask, not a probability map (cross-validation writes "
                              "the networks' maps in probabilities/)")
    return probability_map


def dicom_series_files(folder: Path, series_uid: str | None = None) -> tuple[str, ...]:
    """The files of one DICOM series of ``folder``, in order.

    Parameters
    ----------
    folder : Path
        Folder holding the DICOM files directly.
    series_uid : str, optional
        The series to take; needed where the folder holds several.

    Returns
    -------
    tuple of str
        Paths of the series' files.

    Raises
    ------
    InputImageError
        Naming the folder, for no DICOM files, several series and no ``series_uid``, or no series
        ``series_uid``.
    """
    series = dicom_series_ids(folder)
    if not series:
        raise InputImageError(f"{folder}: is a folder without DICOM files, not an image file")
    if series_uid is None and len(series) > 1:
        raise InputImageError(f"{folder}: holds {len(series)} DICOM series ({', '.join(series)}); choose one with --series")
    if series_uid is not None and series_uid not in series:
        raise InputImageError(f"{folder}: has no DICOM series {series_uid} (found {', '.join(series)})")
    return tuple(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series_uid or series[0]))


def read_dicom_series(folder: Path, series_uid: str | None = None) -> sitk.Image:
    """Read and check one DICOM series from ``folder``.

    Parameters
    ----------
    folder : Path
        Folder holding the DICOM files directly.
    series_uid : str, optional
        The series to read; needed where the folder holds several.

    Returns
    -------
    SimpleITK.Image

    Raises
    ------
    InputImageError
        Naming the folder, for a series that cannot be chosen or read, or an image that fails
        ``check_image``.
    """
    files = dicom_series_files(folder, series_uid)
    _check_slice_positions(folder, files)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    try:
        image = reader.Execute()
    except RuntimeError as error:
        raise InputImageError(f"{folder}: cannot read DICOM series ({_itk_reason(error)})") from None
    check_image(image, folder)
    return image


def _check_slice_positions(folder: Path, files: tuple[str, ...]) -> None:
    """Refuse a series whose slices are not evenly spaced along their normal: read as a stack, a
    series with a slice missing places every slice past the gap one slice off, and one with a slice
    twice adds a slice's volume (ITK only warns, over several lines).

    Raises
    ------
    InputImageError
        Naming the folder and the two files where the spacing breaks.
    """
    reader, positions, orientation = sitk.ImageFileReader(), [], None
    for name in files:
        reader.SetFileName(name)
        try:
            reader.ReadImageInformation()
            positions.append([float(value) for value in reader.GetMetaData("0020|0032").split("\\")])
            orientation = [float(value) for value in reader.GetMetaData("0020|0037").split("\\")]
        except (RuntimeError, ValueError):  # no position to check by (a single-file series, say): ITK decides
            return
    if len(positions) < 3 or len(orientation) != 6:
        return
    along = np.array(positions) @ np.cross(orientation[:3], orientation[3:])
    steps = np.abs(np.diff(along))
    typical = float(np.median(steps))
    if (odd := np.flatnonzero(np.abs(steps - typical) > 0.1 * typical)).size:
        first, second = Path(files[odd[0]]).name, Path(files[odd[0] + 1]).name
        raise InputImageError(
            f"{folder}: its slices lie {typical:.2f} mm apart, but {steps[odd[0]]:.2f} mm between {first} and {second} "
            f"({'a slice twice' if steps[odd[0]] < 0.5 * typical else 'slices missing'}?): the series cannot be "
            "read as an evenly spaced volume")


def read_case(case: CaseInput) -> sitk.Image:
    """The image of a case, read from its file or DICOM folder and checked.

    Raises
    ------
    InputImageError
        As ``read_image`` or ``read_dicom_series`` raise it.
    """
    if case.path.is_dir():  # read_dicom_series scans the folder once and says if it holds none
        return read_dicom_series(case.path, case.series_uid)
    return read_image(case.path)


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes, as a hex string."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def scan_fingerprint(path: Path) -> str:
    """A digest of what the file system says of a scan, not of its bytes: for its path itself (a
    link there, or the folder) and for its file, or each file directly in its DICOM folder, both
    as named and as linked to (``lstat`` and ``stat``), the name, inode, size and modification and
    change times. Replacing, moving in, deleting or editing a file changes it; a copy of the
    output folder does not. Cheap where hashing the scans of a cohort is not; a change may also
    come from a ``touch`` or a ``chmod``, so a differing fingerprint calls for the SHA-256, not a
    verdict.

    Raises
    ------
    InputImageError
        For a file that is not there (``_check_file_is_there``) or a path that cannot be read.
    """
    if not path.is_dir():
        _check_file_is_there(path)
    try:
        files = sorted(entry for entry in path.iterdir() if entry.is_file()) if path.is_dir() else [path]
        described = [path.lstat()] + [status for entry in files for status in (entry.lstat(), entry.stat())]
        names = [path.name] + [entry.name for entry in files for _ in range(2)]
    except OSError as error:
        raise InputImageError(f"{path}: cannot read ({error.strerror or error})") from None
    digest = hashlib.sha256()
    for name, status in zip(names, described):
        digest.update(f"{name}\0{status.st_ino} {status.st_size} {status.st_mtime_ns} {status.st_ctime_ns}\n".encode())
    return digest.hexdigest()[:32]


def case_sha256(case: CaseInput) -> str:
    """SHA-256 that identifies a case's image: of its file, or of its DICOM series' files in order.

    Returns
    -------
    str
        Hex digest; for a DICOM series, the digest of its files' digests in order.

    Raises
    ------
    InputImageError
        Naming the case's path, when it cannot be read.
    """
    try:
        if not case.path.is_dir():
            _check_file_is_there(case.path)
            return file_sha256(case.path)
        digest = hashlib.sha256()
        for name in dicom_series_files(case.path, case.series_uid):
            digest.update(bytes.fromhex(file_sha256(name)))
        return digest.hexdigest()
    except OSError as error:
        raise InputImageError(f"{case.path}: cannot read ({error.strerror or error})") from None


def grid_difference(a: sitk.Image, b: sitk.Image) -> str:
    """How ``a``'s grid differs from ``b``'s, in words, for a message: the size, or the spacing,
    origin or direction beyond rounding; "" for the same grid."""
    if a.GetSize() != b.GetSize():
        return f"size {a.GetSize()} against {b.GetSize()}"
    for what, mine, theirs, tolerance in (("spacing", a.GetSpacing(), b.GetSpacing(), 1e-4),
                                          ("origin", a.GetOrigin(), b.GetOrigin(), 1e-3),
                                          ("direction", a.GetDirection(), b.GetDirection(), 1e-4)):
        if not np.allclose(mine, theirs, atol=tolerance):
            return f"{what} {tuple(round(value, 4) for value in mine)} against {tuple(round(value, 4) for value in theirs)}"
    return ""


def same_grid(a: sitk.Image, b: sitk.Image) -> bool:
    """Whether two images have the same size, spacing, origin and direction (to rounding)."""
    return not grid_difference(a, b)


def on_grid_of(image: sitk.Image, grid: sitk.Image, path: Path, grid_path: Path, grid_is: str) -> sitk.Image:
    """``image`` on the voxels of ``grid``: as it is, or with its axes reordered and flipped when
    that makes the grids the same (a mask saved by a tool that writes another axis order holds
    the same voxels); nothing is resampled.

    Parameters
    ----------
    image, grid : sitk.Image
    path, grid_path : Path
        Their files, for the message.
    grid_is : str
        What ``grid`` is to ``image``, for the message: "label", "image".

    Raises
    ------
    InputImageError
        ``PATH: not on the grid of its GRID_IS GRID_PATH (what differs)``, in ``grid``'s axis order
        where reordering changed it.
    """
    if same_grid(image, grid):
        return image
    grid_axes = sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(grid.GetDirection())
    reordered = sitk.DICOMOrient(image, grid_axes)
    difference = grid_difference(reordered, grid)
    if not difference:
        return reordered
    if reordered.GetDirection() != image.GetDirection():
        difference = f"in the {grid_is}'s axis order: {difference}"
    raise InputImageError(f"{path}: not on the grid of its {grid_is} {grid_path} ({difference})")


def files_by_case(folder: Path) -> dict[str, Path]:
    """Image and segmentation files of a folder by case name (file name without suffix); hidden
    files (``_hidden``) left out.

    Raises
    ------
    LeftAtriumSegError
        For a path that is not a folder.
    """
    if not folder.is_dir():
        raise LeftAtriumSegError(f"{folder}: not a folder")
    suffixes = (SEGMENTATION_SUFFIX, *IMAGE_SUFFIXES)
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.lower().endswith(suffixes) and not _hidden(path):
            if case_name(path) in files:
                raise LeftAtriumSegError(f"{folder}: two files of case {case_name(path)}: {files[case_name(path)].name} "
                                         f"and {path.name}; which is it?")
            files[case_name(path)] = path
    return files


def _partial_prefix() -> str:
    return f".partial-{socket.gethostname()}-{os.getpid()}-"


# Below this, a full disk is found before any inference; outputs are 0.1-1 MB each.
MIN_FREE_BYTES = 64 << 20


def create_output_folder(folder: Path) -> None:
    """Make the output folder (``--output-dir``) and make sure it takes files.

    Called once, before any case: one clear error instead of one per case after each one's
    inference. A byte is written to a probe file, as a folder may take new files but no data
    (a full disk, a quota).

    Raises
    ------
    LeftAtriumSegError
        For a path that exists and is not a folder, a folder that cannot be made or written
        into, or less than ``MIN_FREE_BYTES`` free on its file system.
    """
    if folder.exists() and not folder.is_dir():
        raise LeftAtriumSegError(f"{folder}: --output-dir exists and is not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle, probe = tempfile.mkstemp(prefix=_partial_prefix(), suffix="-probe", dir=folder)
        try:
            os.write(handle, b"\0")  # a folder may take new files but no data (a full disk, a quota)
        finally:
            os.close(handle)
            os.remove(probe)
    except OSError as error:
        raise LeftAtriumSegError(f"{folder}: cannot write into the output folder ({error.strerror})") from None
    free = shutil.disk_usage(folder).free
    if free < MIN_FREE_BYTES:
        raise LeftAtriumSegError(f"{folder}: only {free >> 20} MB free in the output folder's file system")


def refuse_existing_output(path: Path, overwrite: bool = False) -> None:
    """Check that ``path`` is free to write: the user's files are replaced only when asked.

    Raises
    ------
    FileExistsError
        For an existing ``path`` without ``overwrite``, and for a folder under its name, which
        ``overwrite`` does not replace.
    """
    if path.is_dir():
        raise FileExistsError(f"{path}: is a folder; the output is a file (give a file's name)")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path}: output exists (use --overwrite to replace it)")


@contextmanager
def atomic_output(path: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it to ``path``.

    On failure the temporary file is removed and ``path`` is untouched. A process killed
    meanwhile leaves only the hidden temporary file, which ``remove_stale_partials`` clears on
    the next run.

    Parameters
    ----------
    path : Path
        The output's final name; its folder is made where missing.
    overwrite : bool, optional
        Replace an existing file at ``path``; without it, an existing file is refused.

    Yields
    ------
    Path
        The temporary file to write, in ``path``'s folder.

    Raises
    ------
    FileExistsError
        For an existing ``path`` without ``overwrite``, before anything is written.
    OSError
        For a failure while writing (a full disk, say), with ``path`` in its message.
    """
    refuse_existing_output(path, overwrite)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=_partial_prefix(), suffix="-" + path.name, dir=path.parent)
    except OSError as error:  # a file where a folder should be, no permission: named, before anything is written
        above = next((folder for folder in path.parents if folder.exists()), path.parent)
        reason = f"{above} is a file, not a folder" if not above.is_dir() else error.strerror or str(error)
        raise OSError(f"{path}: cannot be written ({reason})") from None
    os.close(handle)
    try:
        try:
            yield Path(temporary)
            if os.path.exists(temporary):  # else the body placed it itself (a commit under a lock)
                os.chmod(temporary, 0o666 & ~_umask())  # mkstemp makes it private; outputs are ordinary files
                os.replace(temporary, path)
        except OSError as error:
            if str(path) in str(error):
                raise
            raise OSError(f"{path}: cannot be written ({error.strerror or error})") from None
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


_UMASK_READ = threading.Lock()


def _umask() -> int:
    # Reading the umask means setting it, for the whole process: one thread at a time.
    with _UMASK_READ:
        current = os.umask(0)
        os.umask(current)
    return current


def place_output(temporary: Path, path: Path, overwrite: bool = False) -> None:
    """Give a written and checked temporary file its final name (for a commit under a lock:
    ``atomic_output`` otherwise does it).

    Raises
    ------
    FileExistsError
        For an existing ``path`` without ``overwrite``: another run made it meanwhile.
    """
    refuse_existing_output(path, overwrite)
    os.chmod(temporary, 0o666 & ~_umask())
    os.replace(temporary, path)


@contextmanager
def locked(folder: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` for the block.

    Runs that share an output folder take turns at its tables. On POSIX the folder itself is
    locked (flock), so no lock file is left behind; elsewhere a ``.leftatriumseg.lock`` file in it.
    The threads of one run queue first at a lock of their own: the folder's lock is for processes
    (and on Windows waits in steps of a second).
    """
    with _THIS_PROCESS, _locked_against_other_processes(folder):
        yield


_THIS_PROCESS = threading.Lock()


@contextmanager
def _locked_against_other_processes(folder: Path) -> Iterator[None]:
    if os.name == "posix":
        import fcntl  # noqa: PLC0415

        descriptor = os.open(folder, os.O_RDONLY)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX)
            yield
        finally:
            os.close(descriptor)  # closing releases the lock
        return
    import msvcrt  # noqa: PLC0415

    with open(folder / ".leftatriumseg.lock", "a+b") as handle:
        while True:
            try:
                handle.seek(0)
                msvcrt.locking(handle.fileno(), msvcrt.LK_LOCK, 1)
                break
            except OSError:  # LK_LOCK gives up after 10 s while another run holds the lock
                continue
        try:
            yield
        finally:
            handle.seek(0)
            msvcrt.locking(handle.fileno(), msvcrt.LK_UNLCK, 1)


@contextmanager
def held_alone(folder: Path, holder: str) -> Iterator[None]:
    """Hold ``folder`` for the block, or refuse at once where another process holds it: a run
    folder written by two runs at once (a job requeued while the first still runs, an
    ``--overwrite`` of a run not yet ended) ends as a mix of both. On POSIX the folder itself is
    locked (flock, released when the process ends however it ends); elsewhere, and for a folder
    not there, nothing is held.

    Raises
    ------
    LeftAtriumSegError
        Another process holds the folder; ``holder`` names what it is (``train``).
    """
    if os.name != "posix" or not folder.is_dir():
        yield
        return
    import fcntl  # noqa: PLC0415

    descriptor = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LeftAtriumSegError(f"{folder}: another {holder} is running in this folder; wait for it to end, or "
                                     "use another folder") from None
        yield
    finally:
        os.close(descriptor)  # closing releases the lock


def remove_stale_partials(folder: Path) -> list[Path]:
    """Delete temporary files left in ``folder`` by killed processes of this host.

    Files of live processes (other shards writing to the same folder) and of other hosts
    are left alone. Off POSIX nothing is removed: only there can a process be probed.

    Returns
    -------
    list of Path
        The files removed.
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
    """``(4, 4)`` matrix from voxel index (i, j, k) to physical LPS coordinates in mm."""
    matrix = np.eye(4)
    matrix[:3, :3] = np.array(image.GetDirection()).reshape(3, 3) * np.array(image.GetSpacing())
    matrix[:3, 3] = image.GetOrigin()
    return matrix


def _verify_written(path: Path, final_path: Path, mask: np.ndarray, reference: sitk.Image) -> None:
    """Read a just-written mask back, whole, and compare it with what was meant: a writer that
    ran out of disk may say nothing and leave a file that reads as part of the mask."""
    try:
        if path.name.lower().endswith(".gz"):
            _check_gzip_stream(path)
        written = sitk.ReadImage(str(path))
    except (InputImageError, RuntimeError) as error:
        raise OSError(f"{final_path}: the written file does not read back ({error}); disk full?") from None
    voxels = sitk.GetArrayViewFromImage(written)
    if written.GetDimension() == 4:  # a .seg.nrrd with layers
        voxels = voxels.any(axis=-1)
    if voxels.shape != mask.shape or not same_grid(written, reference) or not np.array_equal(voxels != 0, mask):
        raise OSError(f"{final_path}: the written file does not hold the mask that was written; disk full?")


# Places a written, checked temporary file under its final name itself (``place_output``), e.g.
# together with the table row that records it, under the output folder's lock.
Commit = Callable[[Path], None]


def write_label_map(mask: np.ndarray, reference: sitk.Image, path: Path, overwrite: bool = False,
                    commit: Commit | None = None) -> None:
    """Write a 0/1 mask as a uint8 label map on ``reference``'s grid (NIfTI, NRRD, ...).

    The file is written under a temporary name (``atomic_output``), read back and compared with
    ``mask`` before it takes its name.

    Parameters
    ----------
    mask : ndarray, shape (Z, Y, X)
        Boolean or 0/1 mask.
    reference : SimpleITK.Image
        The image whose grid (size, spacing, origin, direction) the mask is on.
    path : Path
        Output file; its suffix chooses the format.
    overwrite : bool, optional
        Replace an existing file at ``path``.
    commit : callable, optional
        ``commit(written_file)`` gives the verified file its name itself (``place_output``), in
        place of the plain rename: so that its record and the file appear together, under a lock.

    Raises
    ------
    FileExistsError
        For an existing ``path`` without ``overwrite``.
    OSError
        Naming ``path``, for a file that cannot be written or does not read back as ``mask``
        (a full disk, say).
    """
    label_map = sitk.GetImageFromArray(mask.astype(np.uint8))
    label_map.CopyInformation(reference)
    with atomic_output(path, overwrite) as temporary:
        try:
            sitk.WriteImage(label_map, str(temporary), useCompression=True)
        except RuntimeError as error:
            raise OSError(f"{path}: cannot be written ({_itk_reason(error)})") from None
        _verify_written(temporary, path, mask, reference)
        if commit is not None:
            commit(temporary)


def _extent_ijk(mask: np.ndarray) -> list[int]:
    """A ``(Z, Y, X)`` mask's bounding box as a Slicer segment's extent: first and last voxel along
    i, j and k; ``[0, -1, 0, -1, 0, -1]`` for an empty mask."""
    bounds = bounding_box(mask)
    return [0, -1, 0, -1, 0, -1] if bounds is None else [index for pair in bounds[::-1] for index in pair]


_NRRD_TIME_STAMP = re.compile(rb"^# on [^\n]*\(GMT\)\.\n", re.MULTILINE)


def write_segmentation(mask: np.ndarray, reference: sitk.Image, path: Path, overwrite: bool = False,
                       commit: Commit | None = None) -> None:
    """Write a mask as a Slicer ``.seg.nrrd`` with one "Left atrium" segment.

    The segment carries the left atrium's terminology (``LEFT_ATRIUM_SEGMENT``). The file is read
    back and compared before it takes its name, as in ``write_label_map``.

    Parameters
    ----------
    mask : ndarray, shape (Z, Y, X)
        Boolean or 0/1 mask.
    reference : SimpleITK.Image
        The image whose grid the mask is on.
    path : Path
        Output ``.seg.nrrd`` file.
    overwrite, commit
        As in ``write_label_map``.

    Raises
    ------
    FileExistsError
        For an existing ``path`` without ``overwrite``.
    OSError
        Naming ``path``, for a file that cannot be written or does not read back as ``mask``.
    """
    import slicerio  # noqa: PLC0415 - the Slicer module imports this module before its packages are installed

    # One segment on one layer, as slicerio.add_segment would store it, built directly: its
    # general search for a free layer cost a batch 0.09 s a scan. (Z, Y, X) transposed is the
    # (i, j, k) array, already in the Fortran order the NRRD writer wants.
    segment = dict(LEFT_ATRIUM_SEGMENT, labelValue=1, layer=0, extent=_extent_ijk(mask), status="completed")
    segmentation = {"voxels": mask.astype(bool).view(np.uint8).transpose(2, 1, 0), "ijkToLPS": ijk_to_lps(reference),
                    "segments": [segment]}
    written = BytesIO()
    slicerio.write_segmentation(written, segmentation)
    content = written.getvalue()
    header_end = content.index(b"\n\n")
    # pynrrd stamps the time of writing into a header comment: without it, the same mask gives the
    # same file, and the same SHA-256 in the results table, on every run.
    header = _NRRD_TIME_STAMP.sub(b"", content[:header_end], count=1)
    with atomic_output(path, overwrite) as temporary:
        temporary.write_bytes(header + content[header_end:])
        _verify_written(temporary, path, mask, reference)
        if commit is not None:
            commit(temporary)
