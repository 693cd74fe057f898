"""Agreement between a predicted and a reference mask: overlap, surface distance, volume."""

from __future__ import annotations

import math

import numpy as np
import SimpleITK as sitk

from .postprocessing import distance_mm


def dice(prediction: np.ndarray, reference: np.ndarray) -> float:
    """Dice coefficient of two boolean masks; 1.0 when both are empty."""
    total = np.count_nonzero(prediction) + np.count_nonzero(reference)
    return 1.0 if total == 0 else 2.0 * np.count_nonzero(prediction & reference) / total


def _surface(mask: np.ndarray) -> np.ndarray:
    """Voxels of ``mask`` with a background voxel among their 26 neighbours (beyond the array
    counts as background)."""
    contour = sitk.BinaryContour(sitk.GetImageFromArray(np.pad(mask, 1).astype(np.uint8)), fullyConnected=True)
    return sitk.GetArrayFromImage(contour)[1:-1, 1:-1, 1:-1].astype(bool)


def surface_distances_mm(a: np.ndarray, b: np.ndarray, spacing_mm: tuple[float, float, float]) -> np.ndarray:
    """Distances in mm from every surface voxel of ``a`` to the surface of ``b``, and back.

    A surface voxel is one with a background voxel among its 26 neighbours. Computed on the
    bounding box of both masks plus one voxel: every surface voxel lies in it, so the distances
    are those of the whole grid, at a fraction of the cost.

    Parameters
    ----------
    a, b : ndarray of bool, shape (Z, Y, X)
        Non-empty masks on one grid.
    spacing_mm : tuple of float
        Voxel spacing ``(x, y, z)`` in mm.

    Returns
    -------
    ndarray of float32, shape (n,)
        The distances of ``a``'s surface voxels, then those of ``b``'s.
    """
    box = tuple(slice(max(int(i.min()) - 1, 0), int(i.max()) + 2) for i in np.nonzero(a | b))
    a, b = a[box], b[box]
    surface_a, surface_b = _surface(a), _surface(b)
    # A surface voxel's own distance is 0: the map's values inside the surface do not count.
    to_b = np.maximum(distance_mm(surface_b, spacing_mm), 0)
    to_a = np.maximum(distance_mm(surface_a, spacing_mm), 0)
    return np.concatenate([to_b[surface_a], to_a[surface_b]])


def mean_of_defined(values) -> float:
    """Mean of the values that are not NaN; NaN, without numpy's warning, where none is.

    Distances are NaN where a mask is empty, and a run whose every mask is empty has no mean
    distance: that is a finding, not a fault.
    """
    defined = np.asarray(values, dtype=float)
    defined = defined[~np.isnan(defined)]
    return float(defined.mean()) if defined.size else float("nan")


def segmentation_metrics(
    prediction: np.ndarray, reference: np.ndarray, spacing_mm: tuple[float, float, float]
) -> dict[str, float]:
    """Dice, 95th-percentile Hausdorff distance, average symmetric surface distance and volumes.

    Parameters
    ----------
    prediction, reference : ndarray of bool, shape (Z, Y, X)
        Masks on one grid.
    spacing_mm : tuple of float
        Voxel spacing ``(x, y, z)`` in mm.

    Returns
    -------
    dict of str to float
        ``dice``; ``hd95_mm`` and ``assd_mm``, the 95th percentile and the mean of the surface
        distances both ways (``surface_distances_mm``), in mm, NaN when either mask is empty;
        ``predicted_ml``, ``reference_ml`` and ``abs_volume_error_ml``, in mL.
    """
    voxel_ml = float(np.prod(spacing_mm)) / 1000.0
    predicted_ml = np.count_nonzero(prediction) * voxel_ml
    reference_ml = np.count_nonzero(reference) * voxel_ml
    if prediction.any() and reference.any():
        distances = surface_distances_mm(prediction, reference, spacing_mm)
        hd95, assd = float(np.percentile(distances, 95)), float(distances.mean())
    else:
        hd95 = assd = float("nan")
    return {
        "dice": dice(prediction, reference),
        "hd95_mm": hd95,
        "assd_mm": assd,
        "predicted_ml": predicted_ml,
        "reference_ml": reference_ml,
        "abs_volume_error_ml": abs(predicted_ml - reference_ml),
    }


def bland_altman(predicted_ml, reference_ml) -> dict[str, float]:
    """Agreement of predicted with reference volumes (Bland and Altman, Lancet 1986).

    Parameters
    ----------
    predicted_ml, reference_ml : array_like of float
        Volumes in mL, case by case (at least two cases).

    Returns
    -------
    dict
        ``bias_ml`` (mean of predicted - reference) and the 95% limits of agreement ``lower_ml``,
        ``upper_ml`` (bias -/+ 1.96 standard deviations of the differences); the same in % of
        each reference volume (``bias_pct``, ``lower_pct``, ``upper_pct``), over the cases whose
        reference is not empty (NaN where fewer than two are); and the mean absolute error,
        ``mae_ml`` and ``mae_pct``.

    Raises
    ------
    ValueError
        For fewer than two cases, or volumes that do not pair up.
    """
    predicted, reference = np.asarray(predicted_ml, dtype=float), np.asarray(reference_ml, dtype=float)
    if predicted.shape != reference.shape or predicted.size < 2:
        raise ValueError("Bland-Altman agreement needs the volumes of two or more cases, in pairs")
    agreement = {}
    measured = reference > 0  # an empty reference has no volume to be a share of
    for unit, differences in (("ml", predicted - reference),
                              ("pct", 100 * (predicted[measured] - reference[measured]) / reference[measured])):
        if differences.size < 2:
            agreement.update(dict.fromkeys((f"bias_{unit}", f"lower_{unit}", f"upper_{unit}", f"mae_{unit}"), math.nan))
            continue
        bias, spread = float(differences.mean()), float(1.96 * differences.std(ddof=1))
        agreement.update({f"bias_{unit}": bias, f"lower_{unit}": bias - spread, f"upper_{unit}": bias + spread,
                          f"mae_{unit}": float(np.abs(differences).mean())})
    return agreement
