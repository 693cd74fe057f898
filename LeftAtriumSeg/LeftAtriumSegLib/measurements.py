"""Left-atrial volume and its indexing to body surface area."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# LA volume index grades (mL/m2), after Lang et al., "Recommendations for chamber
# quantification", J Am Soc Echocardiogr 2005;18:1440-63 (echocardiography). Reference
# ranges depend on modality, method and cardiac phase: these grade the maximal (end-systolic)
# volume by 2D echocardiography, while a 3D MRI covers the whole atrium (MRI volumes run larger;
# CMR ranges: Maceira et al., J Cardiovasc Magn Reson 2010;12:65) at whatever phase it was
# acquired. Pass other thresholds where they apply.
ASE_2005_LAVI_GRADES: tuple[tuple[float, str], ...] = (
    (29.0, "normal"),
    (34.0, "mildly enlarged"),
    (40.0, "moderately enlarged"),
    (math.inf, "severely enlarged"),
)
ASE_2005_SOURCE = "Lang et al., J Am Soc Echocardiogr 2005;18:1440-63"



@dataclass(frozen=True)
class VolumeMeasurement:
    """Volume of a mask.

    Attributes
    ----------
    voxel_count : int
        Voxels in the mask.
    volume_mm3 : float
        Voxel count times the voxel's volume, in mm3.
    """

    voxel_count: int
    volume_mm3: float

    @property
    def volume_ml(self) -> float:
        """The volume in mL."""
        return self.volume_mm3 / 1000.0


def measure_volume(mask: np.ndarray, spacing_mm: tuple[float, float, float]) -> VolumeMeasurement:
    """Volume of a binary mask: voxel count times the voxel's volume.

    Parameters
    ----------
    mask : ndarray, shape (Z, Y, X)
        Non-zero voxels are inside.
    spacing_mm : tuple of float
        Voxel spacing ``(x, y, z)`` in mm.
    """
    voxel_count = int(np.count_nonzero(mask))
    return VolumeMeasurement(voxel_count, voxel_count * float(np.prod(spacing_mm)))


def patient_axis_extents_mm(mask: np.ndarray, spacing_mm: tuple[float, float, float],
                            direction: tuple[float, ...]) -> np.ndarray:
    """Extents of a mask along the patient's axes, whatever the grid's orientation.

    Parameters
    ----------
    mask : ndarray, shape (Z, Y, X)
        Non-zero voxels are inside.
    spacing_mm : tuple of float
        Voxel spacing ``(x, y, z)`` in mm.
    direction : tuple of float
        The grid's direction cosines, row-major 3x3 (SimpleITK's ``GetDirection``), in LPS.

    Returns
    -------
    ndarray, shape (3,)
        Right-left, anterior-posterior and superior-inferior extents in mm, voxels counted whole;
        zeros for an empty mask.
    """
    inside = mask if mask.dtype == bool else mask != 0
    z, y = np.nonzero(inside.any(axis=2))  # the rows along x that hold the mask
    if len(z) == 0:
        return np.zeros(3)
    # A set's extreme along any direction lies at the first or last voxel of some row.
    rows = inside[z, y]
    first_x = rows.argmax(axis=1)
    last_x = inside.shape[2] - 1 - rows[:, ::-1].argmax(axis=1)
    ends_xyz = np.concatenate([np.stack([first_x, y, z], 1), np.stack([last_x, y, z], 1)])
    to_patient = np.reshape(direction, (3, 3)) * np.asarray(spacing_mm)  # columns: one step along x, y, z
    points = ends_xyz @ to_patient.T
    voxel_span = np.abs(to_patient).sum(axis=1)
    return points.max(axis=0) - points.min(axis=0) + voxel_span


# Beyond these a value is most likely in other units (metres, pounds) or mistyped; an LA volume
# index computed from it would look plausible and be wrong.
HEIGHT_RANGE_CM = (40.0, 250.0)
WEIGHT_RANGE_KG = (2.0, 400.0)


def body_surface_area_m2(height_cm: float, weight_kg: float) -> float:
    """Body surface area in m2 by Mosteller's formula: sqrt(height [cm] x weight [kg] / 3600).

    Raises
    ------
    ValueError
        For a height outside ``HEIGHT_RANGE_CM`` or a weight outside ``WEIGHT_RANGE_KG``: most
        likely a value in other units (metres, inches, pounds) or mistyped, whose index would
        look plausible and be wrong.
    """
    if not HEIGHT_RANGE_CM[0] <= height_cm <= HEIGHT_RANGE_CM[1]:
        raise ValueError(f"height {height_cm:g} cm is outside {HEIGHT_RANGE_CM[0]:g}-{HEIGHT_RANGE_CM[1]:g} cm "
                         "(given in metres or inches?)")
    if not WEIGHT_RANGE_KG[0] <= weight_kg <= WEIGHT_RANGE_KG[1]:
        raise ValueError(f"weight {weight_kg:g} kg is outside {WEIGHT_RANGE_KG[0]:g}-{WEIGHT_RANGE_KG[1]:g} kg "
                         "(given in pounds?)")
    return math.sqrt(height_cm * weight_kg / 3600.0)


# The LA volume index is given, and graded, to 0.1 mL/m2 in every output: graded unrounded, 28.996
# was shown as 29.0 beside the grade of under 29.
LAVI_DECIMALS = 1


def grade_lavi(lavi_ml_per_m2: float, grades: tuple[tuple[float, str], ...] = ASE_2005_LAVI_GRADES) -> str:
    """Grade of an LA volume index: the first grade whose upper bound (exclusive) exceeds it.

    Parameters
    ----------
    lavi_ml_per_m2 : float
        LA volume index in mL/m2.
    grades : tuple of (float, str), optional
        ``(upper bound in mL/m2, name)`` pairs, bounds increasing, the last ``math.inf``;
        ``ASE_2005_LAVI_GRADES`` (echocardiographic; see its comment) unless others apply.
    """
    return next(name for upper, name in grades if lavi_ml_per_m2 < upper)


@dataclass(frozen=True)
class VolumeIndex:
    """LA volume indexed to body surface area.

    Attributes
    ----------
    bsa_m2 : float
        Body surface area in m2 (Mosteller).
    ml_per_m2 : float
        LA volume index in mL/m2, to 0.1 mL/m2 (``LAVI_DECIMALS``).
    grade : str
        Its grade (``grade_lavi``) as given.
    """

    bsa_m2: float
    ml_per_m2: float
    grade: str


def index_volume(volume_ml: float, height_cm: float, weight_kg: float,
                 grades: tuple[tuple[float, str], ...] = ASE_2005_LAVI_GRADES) -> VolumeIndex:
    """BSA (Mosteller), LA volume index and its grade for one patient.

    Parameters
    ----------
    volume_ml : float
        LA volume in mL.
    height_cm, weight_kg : float
        Height in cm and weight in kg.
    grades : tuple of (float, str), optional
        As in ``grade_lavi``.

    Raises
    ------
    ValueError
        For a height or weight outside ``HEIGHT_RANGE_CM`` / ``WEIGHT_RANGE_KG``.
    """
    bsa_m2 = body_surface_area_m2(height_cm, weight_kg)
    ml_per_m2 = round(volume_ml / bsa_m2, LAVI_DECIMALS)
    return VolumeIndex(bsa_m2, ml_per_m2, grade_lavi(ml_per_m2, grades))


@dataclass(frozen=True)
class AtriumMeasurement:
    """What every front end reports of one left atrium: ``volumes.csv``'s row, the Slicer table.

    Attributes
    ----------
    volume : VolumeMeasurement
    index : VolumeIndex or None
        None where height or weight is not known.
    """

    volume: VolumeMeasurement
    index: VolumeIndex | None = None


def measure_atrium(mask: np.ndarray, spacing_mm: tuple[float, float, float], height_cm: float | None = None,
                   weight_kg: float | None = None,
                   grades: tuple[tuple[float, str], ...] = ASE_2005_LAVI_GRADES) -> AtriumMeasurement:
    """Volume of a ``(Z, Y, X)`` mask and, given height and weight (both > 0), its index and grade.

    Parameters
    ----------
    mask : ndarray of bool, shape (Z, Y, X)
    spacing_mm : tuple of float
        Voxel spacing ``(x, y, z)`` in mm, as SimpleITK gives it.
    height_cm, weight_kg : float or None, optional
        Height in cm and weight in kg; None or 0 where unknown.
    grades : tuple of (float, str), optional
        The LAVI grades, ``ASE_2005_LAVI_GRADES`` unless others apply.

    Raises
    ------
    ValueError
        For a height or weight outside ``HEIGHT_RANGE_CM`` / ``WEIGHT_RANGE_KG``.
    """
    volume = measure_volume(mask, spacing_mm)
    if not (height_cm and weight_kg):
        return AtriumMeasurement(volume)
    return AtriumMeasurement(volume, index_volume(volume.volume_ml, height_cm, weight_kg, grades))
