"""Cases brought into the model frame once and kept in memory, and the list the networks train on.

Each case is read, checked and resampled to the model frame before any training, so a bad file
stops a run before it writes anything; each view's network then slices the arrays its own way
(``PreparedCase.in_view``).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from tqdm import tqdm

from ..datasets import Case, task02_to_anatomical
from ..io import on_grid_of, read_image, read_mask
from ..model_file import ModelConfig
from ..preprocessing import ModelFrame, normalise_intensity, to_model_frame, to_view


@dataclass
class PreparedCase:
    """A normalised image and its label, both ``(slice, row, column)``.

    As prepared, the axes are the model frame's ``(Z, Y, X)``; after ``in_view``, a view's. Crops
    centred on the atrium are centred on voxels whose label is non-zero.

    Attributes
    ----------
    case_id : str
        The case's ID, with " (respaced)" or " (anatomical)" for its other presentations.
    image : numpy.ndarray
        float32, z-scored intensities.
    label : numpy.ndarray
        Same shape: uint8 0/1, or float32 0-1 (the mask's share of each voxel).
    foreground_slices : numpy.ndarray
        Indices of the slices (first axis) that hold atrium.
    """

    case_id: str
    image: np.ndarray
    label: np.ndarray

    def __post_init__(self) -> None:
        self.foreground_slices = np.flatnonzero(self.label.any(axis=(1, 2)))

    def in_view(self, view: str) -> PreparedCase:
        """The case sliced along a view's axis.

        Parameters
        ----------
        view : str
            A key of ``preprocessing.VIEW_AXES``.

        Returns
        -------
        PreparedCase
            Image and label as the view's ``(slice, row, column)``: contiguous copies, since
            crops are read often.
        """
        return PreparedCase(self.case_id, np.ascontiguousarray(to_view(self.image, view)),
                            np.ascontiguousarray(to_view(self.label, view)))

    def turned_to_anatomy(self) -> PreparedCase:
        """A Task02_Heart case (model frame) as its anatomy lies: as a scan with correct geometry
        shows it. No copy: training slices every case with ``in_view``, which makes contiguous arrays."""
        return PreparedCase(f"{self.case_id} (anatomical)", task02_to_anatomical(self.image),
                            task02_to_anatomical(self.label))


# One place in the training list: a case, or presentations of one case that share its place,
# one of which is drawn, at random, each time the place comes up.
TrainingEntry = PreparedCase | tuple[PreparedCase, ...]


def alternatives(entry: TrainingEntry) -> tuple[PreparedCase, ...]:
    """The presentations that share one place in the training list.

    Parameters
    ----------
    entry : TrainingEntry
        A place of the training list.

    Returns
    -------
    tuple of PreparedCase
        One or more presentations of one case.
    """
    return entry if isinstance(entry, tuple) else (entry,)


def label_in_frame(label: sitk.Image, frame: ModelFrame) -> sitk.Image:
    """A mask's non-zero voxels, linearly interpolated into ``frame``.

    Parameters
    ----------
    label : SimpleITK.Image
        A 3D mask, on its image's grid.
    frame : ModelFrame
        The model frame.

    Returns
    -------
    SimpleITK.Image
        float32 on the frame's grid: the share of each frame voxel inside the mask, 0-1.
    """
    return to_model_frame(sitk.Cast(label > 0, sitk.sitkFloat32), frame)


def prepare_case(case: Case, config: ModelConfig, fractional_labels: bool = False,
                 respaced: bool = False) -> PreparedCase:
    """A case in the model frame: its normalised image and its label.

    Parameters
    ----------
    case : Case
        The case to read.
    config : ModelConfig
        Its ``frame`` is the model frame.
    fractional_labels : bool
        Keep the mask's share of each voxel (float32, 0-1) instead of cutting it at 0.5 (uint8 0/1).
    respaced : bool
        Read the image and mask with ``case.respaced_mm`` as their spacing.

    Returns
    -------
    PreparedCase
        Image and label ``(Z, Y, X)`` on the model frame's grid; the case ID gets " (respaced)"
        with ``respaced``.

    Raises
    ------
    InputImageError
        A file is missing, corrupt, or no usable image or mask, or the mask does not hold its
        image's voxels (``io.on_grid_of``); the message names the file.
    """
    image = read_image(case.image_path)
    mask = on_grid_of(read_mask(case.label_path), image, case.label_path, case.image_path, "image")
    atrium = np.count_nonzero(sitk.GetArrayViewFromImage(mask))
    if not respaced and atrium in (0, mask.GetNumberOfPixels()):  # trained on, but seldom meant
        tqdm.write(f"warning: {case.label_path}: " + ("no voxel is atrium (an empty label): the case trains as "
                   "background only" if atrium == 0 else "every voxel is atrium: is it the label?"), file=sys.stderr)
    if respaced:
        image.SetSpacing(case.respaced_mm)
        mask.SetSpacing(case.respaced_mm)
    image = to_model_frame(image, config.frame)
    # Labels go through linear interpolation: smoother than nearest neighbour. A cut at 0.5
    # here keeps every voxel that is exactly half inside, which grows la2018_lge's masks by
    # 2.0 mL (docs/model-development.md, "Training targets"); fractions are cut only after
    # augmentation (``augmentation.sample_batch``).
    fraction = sitk.GetArrayFromImage(label_in_frame(mask, config.frame))
    label = fraction.clip(0, 1) if fractional_labels else (fraction >= 0.5).astype(np.uint8)
    case_id = f"{case.case_id} (respaced)" if respaced else case.case_id
    return PreparedCase(case_id, normalise_intensity(sitk.GetArrayViewFromImage(image)), label)


def training_presentations(cases: Sequence[Case], prepared: dict[str, PreparedCase],
                           respaced: dict[str, PreparedCase] | None = None) -> list[TrainingEntry]:
    """The training list: what the networks train on, in the order the sampler indexes it.

    Every case as prepared, paired with its respaced presentation where it has one, then every
    Task02_Heart case again, turned to its anatomy: so the model knows each data set both as it
    comes (mislabelled headers included) and as a scan with correct geometry presents it. A
    respaced case shares its case's place, so the data sets' shares of the crops stay as without
    it (a place of its own cost Task02_Heart's cases accuracy); a turned case has a place of its
    own (docs/model-development.md, "Scans with correct geometry", "Training on both spacings").

    Parameters
    ----------
    cases : sequence of Case
        The cases to train on, in order.
    prepared : dict of str to PreparedCase
        ``prepare_case`` of each case, by case ID (it may hold others).
    respaced : dict of str to PreparedCase, optional
        ``prepare_case(..., respaced=True)`` of the cases that have a respaced presentation.

    Returns
    -------
    list of TrainingEntry
        ``len(cases)`` places, then one per Task02_Heart case.
    """
    respaced = respaced or {}
    return ([(prepared[case.case_id], respaced[case.case_id]) if case.case_id in respaced else prepared[case.case_id]
             for case in cases]
            + [prepared[case.case_id].turned_to_anatomy() for case in cases if case.task02_headers])


@dataclass
class PreparedCases:
    """The cases of a run, each prepared once, from which every fold's training list is drawn.

    Attributes
    ----------
    cases : list of Case
        Every case, in order.
    as_given : dict of str to PreparedCase
        ``prepare_case`` of each case, by case ID.
    respaced : dict of str to PreparedCase
        ``prepare_case(..., respaced=True)`` of each case that has a ``respaced_mm``, by case ID.
    """

    cases: list[Case]
    as_given: dict[str, PreparedCase]
    respaced: dict[str, PreparedCase]

    def training_list(self, held_out: Sequence[Case] = ()) -> list[TrainingEntry]:
        """The training list of every case but some.

        Parameters
        ----------
        held_out : sequence of Case
            The cases to leave out (matched by case ID).

        Returns
        -------
        list of TrainingEntry
            ``training_presentations`` of the other cases, in order.
        """
        left_out = {case.case_id for case in held_out}
        return training_presentations([case for case in self.cases if case.case_id not in left_out],
                                      self.as_given, self.respaced)


def prepare_cases(cases: Sequence[Case], config: ModelConfig, fractional_labels: bool = False,
                  show_progress: bool = True) -> PreparedCases:
    """``prepare_case`` of every case, and of every case with a ``respaced_mm`` again respaced.

    Parameters
    ----------
    cases : sequence of Case
        The run's cases.
    config : ModelConfig
        Its ``frame`` is the model frame.
    fractional_labels : bool
        As for ``prepare_case``.
    show_progress : bool
        Show a progress bar over the cases as given.

    Returns
    -------
    PreparedCases

    Raises
    ------
    InputImageError
        The first case whose files are missing, corrupt or unusable (``prepare_case``).
    """
    as_given = {case.case_id: prepare_case(case, config, fractional_labels)
                for case in tqdm(cases, desc="preparing", disable=not show_progress)}
    respaced = {case.case_id: prepare_case(case, config, fractional_labels, respaced=True)
                for case in cases if case.respaced_mm}
    return PreparedCases(list(cases), as_given, respaced)
