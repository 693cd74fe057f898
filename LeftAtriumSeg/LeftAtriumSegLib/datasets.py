"""The development data sets: folders in the Medical Segmentation Decathlon layout and their
known faults.

A Decathlon folder holds ``dataset.json`` (its ``training`` list names each case's image and
label), ``imagesTr/`` and ``labelsTr/``. Two faults of the data sets this model was developed on
are known and can be named when training (docs/model-development.md has the evidence):

- Task02_Heart's headers mislabel the axes of its images: its "axial" slices are anatomically
  sagittal ("Scans with correct geometry").
- la2018_lge's release states 0.625 mm between slices where the scans' slices are 1.25 mm apart
  ("la2018_lge's slice spacing").
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .errors import LeftAtriumSegError

Spacing = tuple[float, float, float]  # (x, y, z) in mm

# Task02_Heart's headers mislabel its images' axes: read in LPS as the header has it, the anatomy
# runs posterior along x, inferior along y and to the patient's right along z. This is the
# direction, in LPS, that such an image has once reoriented to LPS by its header; a rotation, so
# correcting it mirrors nothing.
TASK02_HEART_ANATOMY_DIRECTION = np.array([[0, 0, -1], [1, 0, 0], [0, -1, 0]], dtype=float)


def task02_to_anatomical(volume: np.ndarray) -> np.ndarray:
    """A Task02_Heart image's model-frame array turned to lie as its anatomy does.

    This is how a scan with correct geometry reaches the model frame: the same voxels as
    resampling the image with ``TASK02_HEART_ANATOMY_DIRECTION``, exactly so on an isotropic
    frame.

    Parameters
    ----------
    volume : numpy.ndarray
        A model-frame array ``(Z, Y, X)`` of a Task02_Heart image or mask, any dtype.

    Returns
    -------
    numpy.ndarray
        A view (no copy) of ``volume``, ``(X, Z, Y)`` of the input's axes, flipped where the
        anatomy needs it.
    """
    return np.flip(volume, (0, 1)).transpose(1, 2, 0)


def task02_header_corrected(image: sitk.Image) -> sitk.Image:
    """A Task02_Heart image or mask as a scan of that heart with correct geometry would be.

    Parameters
    ----------
    image : SimpleITK.Image
        A 3D image or mask with Task02_Heart's header.

    Returns
    -------
    SimpleITK.Image
        The same voxels, reoriented to LPS by the header and then given the direction the
        anatomy has (``TASK02_HEART_ANATOMY_DIRECTION``); spacing and pixel type unchanged.
    """
    corrected = sitk.DICOMOrient(image, "LPS")
    corrected.SetDirection(TASK02_HEART_ANATOMY_DIRECTION.ravel().tolist())
    return corrected


def acquired_obliquely(image: sitk.Image, degrees: float) -> sitk.Image:
    """A development scan (or its mask) as an oblique acquisition of the same anatomy would give it:
    resampled onto its own grid turned by ``degrees`` about the x and then the y axis (LPS) through
    its centre, same size and spacing, the direction cosines saying so. A uint8 mask comes back as
    its share of each turned voxel cut at 0.5; an image as float32, 0 outside the old grid.
    """
    rotation = np.eye(3)
    for axis in ((1, 0, 0), (0, 1, 0)):
        rotation = np.array(sitk.VersorTransform(axis, np.deg2rad(degrees)).GetMatrix()).reshape(3, 3) @ rotation
    size = np.array(image.GetSize())
    centre = np.array(image.TransformContinuousIndexToPhysicalPoint((size - 1) / 2.0))
    direction = rotation @ np.array(image.GetDirection()).reshape(3, 3)
    grid = sitk.Image([int(n) for n in size], sitk.sitkUInt8)
    grid.SetSpacing(image.GetSpacing())
    grid.SetDirection([float(v) for v in direction.ravel()])
    grid.SetOrigin([float(v) for v in centre - direction @ ((size - 1) / 2.0 * np.array(image.GetSpacing()))])
    resampled = sitk.Resample(sitk.Cast(image, sitk.sitkFloat32), grid, sitk.Transform(), sitk.sitkLinear, 0.0)
    return sitk.Cast(resampled >= 0.5, sitk.sitkUInt8) if image.GetPixelID() == sitk.sitkUInt8 else resampled


@dataclass(frozen=True)
class Case:
    """One labelled case of a Decathlon folder.

    Attributes
    ----------
    case_id : str
        The image's file name without its extensions.
    image_path, label_path : pathlib.Path
        Absolute paths of the image and its label.
    task02_headers : bool
        The image's header is Task02_Heart's, which mislabels the axes (``task02_to_anatomical``).
    respaced_mm : tuple of float or None
        Voxel spacing (x, y, z mm) of the scan where its header states another; the case is
        trained on both as given and with this spacing.
    """

    case_id: str
    image_path: Path
    label_path: Path
    task02_headers: bool = False
    respaced_mm: Spacing | None = None


def read_decathlon_cases(folder: str | Path, task02_headers: bool = False,
                         respaced_mm: Spacing | None = None) -> list[Case]:
    """The cases listed under ``training`` in ``folder/dataset.json``.

    Parameters
    ----------
    folder : str or pathlib.Path
        A folder in the Decathlon layout.
    task02_headers : bool
        The folder's images carry Task02_Heart's headers, which mislabel the axes.
    respaced_mm : tuple of float, optional
        The scans' voxel spacing (x, y, z mm), where the folder's headers state another.

    Returns
    -------
    list of Case
        In the order ``dataset.json`` lists them; the files are not read.

    Raises
    ------
    LeftAtriumSegError
        The folder is not there or has no ``dataset.json``, or one that does not list ``training``
        cases.
    """
    folder = Path(folder)
    listing_path = folder / "dataset.json"
    if not folder.is_dir():
        raise LeftAtriumSegError(f"{folder}: {'not a folder' if folder.exists() else 'not found'} (--data takes "
                                 "folders in the Decathlon layout: dataset.json, imagesTr/, labelsTr/)")
    if not listing_path.is_file():
        raise LeftAtriumSegError(f"{folder}: no dataset.json (expected the Decathlon layout: dataset.json, imagesTr/, labelsTr/)")
    try:
        listing = json.loads(listing_path.read_text(encoding="utf-8-sig"))  # a byte-order mark, as some editors write
        entries = [(folder / entry["image"], folder / entry["label"]) for entry in listing["training"]]
    except (OSError, ValueError, RecursionError) as error:  # RecursionError: JSON nested too deep to read
        raise LeftAtriumSegError(f"{listing_path}: not a readable dataset.json ({error})") from None
    except (KeyError, TypeError):  # no such key; a list, string or null where an object or path belongs
        raise LeftAtriumSegError(f"{listing_path}: needs a 'training' list of entries each with an 'image' and a "
                                 "'label' path (the Decathlon layout)") from None
    if not entries:
        raise LeftAtriumSegError(f"{listing_path}: its 'training' list is empty")
    cases = []
    for image, label in entries:
        image_path = _resolved(image)
        cases.append(Case(image_path.name.split(".")[0], image_path, _resolved(label), task02_headers, respaced_mm))
    return cases


def _resolved(path: str | Path) -> Path:
    """``path`` absolute, its links followed; a link loop is the user's error, named."""
    try:
        return Path(path).resolve()
    except (RuntimeError, OSError, ValueError) as error:  # RuntimeError: Python 3.11's for a loop; ValueError: a NUL
        raise LeftAtriumSegError(f"{path}: cannot follow the path ({error})") from None


def _by_resolved_path(folders: Iterable[str | Path], given_as: str, question: str = "") -> dict[Path, str | Path]:
    """``folders`` by their resolved paths; one given twice, under any spelling, is refused."""
    named: dict[Path, str | Path] = {}
    for folder in folders:
        if (key := _resolved(folder)) in named:
            raise LeftAtriumSegError(f"{folder}: given twice {given_as} (as {named[key]} too){question}")
        named[key] = folder
    return named


def case_groups(cases: Sequence[Case]) -> list[list[Case]]:
    """Group the cases that share the same image voxels (la_005 and la_026 in msd_heart).

    Two masks of one image must land in one fold, or validation sees a training image.

    Parameters
    ----------
    cases : sequence of Case
        Their images are read, whole.

    Returns
    -------
    list of list of Case
        Every case once; each group in the cases' order, the groups sorted by their first case's ID.
    """
    groups: dict[str, list[Case]] = {}
    for case in cases:
        digest = hashlib.sha1(sitk.GetArrayFromImage(sitk.ReadImage(str(case.image_path))).tobytes()).hexdigest()
        groups.setdefault(digest, []).append(case)
    return sorted(groups.values(), key=lambda group: group[0].case_id)


@dataclass(frozen=True)
class DataFolders:
    """The Decathlon folders to train on, and those of them with a known fault.

    Attributes
    ----------
    folders : sequence of str or pathlib.Path
        The data folders, as given (``training.json`` records them so).
    task02_headers : sequence of str or pathlib.Path
        Those of ``folders`` whose images carry Task02_Heart's headers.
    respaced : mapping of str or pathlib.Path to tuple of float
        Those of ``folders`` whose headers state a wrong voxel spacing, each with its scans'
        spacing (x, y, z mm).

    Raises
    ------
    LeftAtriumSegError
        A folder is given twice (compared as resolved paths), or a Task02_Heart or respaced folder is
        not among ``folders``.
    """

    folders: Sequence[str | Path]
    task02_headers: Sequence[str | Path] = ()
    respaced: Mapping[str | Path, Spacing] = field(default_factory=dict)

    def __post_init__(self) -> None:
        data = _by_resolved_path(self.folders, "among the data folders")
        _by_resolved_path(self.respaced, "as a respaced folder", "; which spacing is the scans'?")
        for named, role in ((self.task02_headers, "a Task02_Heart folder"), (self.respaced, "a respaced folder")):
            outside = {_resolved(folder) for folder in named} - data.keys()
            if outside:
                raise LeftAtriumSegError(f"{sorted(map(str, outside))[0]}: given as {role} but not among the data folders")

    def has_task02_headers(self, folder: str | Path) -> bool:
        """Whether a folder's images carry Task02_Heart's headers.

        Parameters
        ----------
        folder : str or pathlib.Path
            One of ``folders``; compared with ``task02_headers`` as a resolved path.

        Returns
        -------
        bool
        """
        return _resolved(folder) in {_resolved(named) for named in self.task02_headers}

    def scan_spacing(self, folder: str | Path) -> Spacing | None:
        """The scans' spacing of a folder whose headers state a wrong one.

        Parameters
        ----------
        folder : str or pathlib.Path
            One of ``folders``; compared with ``respaced`` as a resolved path.

        Returns
        -------
        tuple of float or None
            (x, y, z) in mm, or None where the folder's headers state the right spacing.
        """
        spacing = {_resolved(named): tuple(mm) for named, mm in self.respaced.items()}
        return spacing.get(_resolved(folder))

    def read_cases(self) -> list[Case]:
        """Every folder's cases (``read_decathlon_cases``), folder by folder, each marked with its
        folder's faults.

        Raises
        ------
        LeftAtriumSegError
            A folder has no ``dataset.json``, or two cases share an ID: training, folds and the
            held-out probability maps know a case by its ID.
        """
        cases = [case for folder in self.folders
                 for case in read_decathlon_cases(folder, self.has_task02_headers(folder), self.scan_spacing(folder))]
        first: dict[str, Case] = {}
        for case in cases:
            earlier = first.setdefault(case.case_id, case)
            if earlier is not case:
                raise LeftAtriumSegError(f"case {case.case_id} is listed twice: {earlier.image_path} and "
                                         f"{case.image_path} (case IDs, the images' names, must differ)")
        return cases
