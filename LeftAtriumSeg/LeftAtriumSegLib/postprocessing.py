"""Cleanup of a thresholded probability map; every step works in millimetres.

Masks are boolean ``(Z, Y, X)`` arrays; ``spacing_mm`` is ``(x, y, z)`` as SimpleITK gives it.
The steps use SimpleITK's filters, which ``segment`` loads anyway: scipy's would add its
0.3-0.5 s import to every run, about a tenth of it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk


# A gap or closing radius beyond the size of a heart cleans nothing more (and an infinite one
# cannot be made into a kernel).
MAX_CLEANUP_MM = 100.0


@dataclass(frozen=True)
class CleanupSettings:
    """Settings of the cleanup that turns a probability map into a mask (``clean_mask``).

    The defaults were chosen by cross-validated ablations (the model card, "Cleanup ablation";
    docs/model-development.md).

    Attributes
    ----------
    threshold : float
        Probability from which a voxel is atrium; strictly between 0 and 1.
    keep_largest_component : bool
        Keep the largest 26-connected component, and the others within ``component_gap_mm``.
    component_gap_mm : float
        How close to the largest component another is kept, in mm.
    fill_holes : bool
        Fill cavities enclosed in 3D.
    closing_radius_mm : float
        Radius of a morphological closing in mm; 0 for none.

    Raises
    ------
    ValueError
        For a threshold outside (0, 1), or a gap or closing radius outside 0-``MAX_CLEANUP_MM``.
    """

    threshold: float = 0.5
    keep_largest_component: bool = True
    component_gap_mm: float = 20.0  # keep other components this close to the largest one
    fill_holes: bool = True
    closing_radius_mm: float = 0.0

    def __post_init__(self) -> None:
        if not 0 < self.threshold < 1:
            raise ValueError(f"threshold {self.threshold:g} must lie between 0 and 1 (it cuts a probability)")
        for name, value in (("component gap", self.component_gap_mm), ("closing radius", self.closing_radius_mm)):
            if not 0 <= value <= MAX_CLEANUP_MM:  # NaN too
                raise ValueError(f"{name} {value:g} mm must lie between 0 and {MAX_CLEANUP_MM:g} mm")

    def options(self) -> list[str]:
        """The ``segment`` options that make these settings.

        They are how ``volumes.csv`` records what made a mask, and how the Slicer module hands its
        settings to its worker. ``from_options`` reads them back.
        """
        options = ["--threshold", str(self.threshold), "--component-gap-mm", str(self.component_gap_mm),
                   "--closing-radius-mm", str(self.closing_radius_mm)]
        if not self.keep_largest_component:
            options.append("--no-largest-component")
        if not self.fill_holes:
            options.append("--no-fill-holes")
        return options

    @classmethod
    def from_options(cls, options: str | list[str]) -> CleanupSettings:
        """Settings from ``options()`` (a list, or one space-separated string).

        Raises
        ------
        ValueError
            For an unknown option, a missing or unreadable value, or a value out of range.
        """
        words = options.split() if isinstance(options, str) else list(options)
        values: dict[str, object] = {}
        numbers = {"--threshold": "threshold", "--component-gap-mm": "component_gap_mm",
                   "--closing-radius-mm": "closing_radius_mm"}
        switches = {"--no-largest-component": "keep_largest_component", "--no-fill-holes": "fill_holes"}
        while words:
            word = words.pop(0)
            if word in switches:
                values[switches[word]] = False
            elif word in numbers:
                try:
                    values[numbers[word]] = float(words.pop(0))
                except (IndexError, ValueError):
                    raise ValueError(f"cleanup option {word} needs a number") from None
            else:
                raise ValueError(f"unknown cleanup option {word!r}")
        return cls(**values)


def _as_image(mask: np.ndarray, spacing_mm: tuple[float, float, float]) -> sitk.Image:
    image = sitk.GetImageFromArray(mask.astype(np.uint8))
    image.SetSpacing([float(s) for s in spacing_mm])
    return image


def bounding_box(mask: np.ndarray) -> list[tuple[int, int]] | None:
    """First and last index of a mask's voxels along each of its axes.

    Parameters
    ----------
    mask : ndarray of bool, shape (Z, Y, X)

    Returns
    -------
    list of (int, int), or None
        ``(first, last)`` per axis, inclusive; None for an empty mask.
    """
    bounds = []
    for axis in range(mask.ndim):
        # A projection per axis, not np.nonzero: a tenth of the time on a whole scan's mask.
        filled = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        if filled.size == 0:
            return None
        bounds.append((int(filled[0]), int(filled[-1])))
    return bounds


def distance_mm(mask: np.ndarray, spacing_mm: tuple[float, float, float]) -> np.ndarray:
    """Each voxel's distance in mm to the nearest voxel centre of a non-empty ``mask``.

    Parameters
    ----------
    mask : ndarray of bool, shape (Z, Y, X)
    spacing_mm : tuple of float
        Voxel spacing ``(x, y, z)`` in mm, as SimpleITK gives it.

    Returns
    -------
    ndarray of float32, shape (Z, Y, X)
        Distances in mm outside ``mask``; 0 or less inside it.
    """
    distance_map = sitk.SignedMaurerDistanceMap(_as_image(mask, spacing_mm), insideIsPositive=False,
                                                squaredDistance=False, useImageSpacing=True)
    return sitk.GetArrayFromImage(distance_map)


def keep_largest_component(mask: np.ndarray, spacing_mm: tuple[float, float, float], gap_mm: float = 0.0) -> np.ndarray:
    """Keep the largest 26-connected component and any other within ``gap_mm`` of it.

    The gap keeps fragments that broke off a thin end of the atrium while dropping
    distant false positives.

    Parameters
    ----------
    mask : ndarray of bool, shape (Z, Y, X)
    spacing_mm : tuple of float
        Voxel spacing ``(x, y, z)`` in mm.
    gap_mm : float, optional
        A component with a voxel within this distance (mm) of the largest is kept; 0 keeps the
        largest alone.

    Returns
    -------
    ndarray of bool, shape (Z, Y, X)
    """
    bounds = bounding_box(mask)
    if bounds is None:
        return mask.copy()
    # Every component lies within the mask's bounding box, and distances in mm do not depend on
    # the grid around it: the search runs there alone.
    box = tuple(slice(first, last + 1) for first, last in bounds)
    inside = mask[box]
    components = sitk.ConnectedComponent(_as_image(inside, spacing_mm), True)  # fully connected: 26 neighbours
    labels = sitk.GetArrayFromImage(sitk.RelabelComponent(components, sortByObjectSize=True))  # 1: the largest
    if labels.max() <= 1:
        return mask.copy()
    largest = labels == 1
    if gap_mm > 0:
        near = np.unique(labels[(distance_mm(largest, spacing_mm) <= gap_mm) & inside])
        largest = np.isin(labels, near[near > 0])
    kept = np.zeros_like(mask, dtype=bool)
    kept[box] = largest
    return kept


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill cavities enclosed in 3D (the atrium's blood pool has none).

    A cavity counts as enclosed unless it reaches the outside through face-to-face steps, the
    background's connectivity that goes with the 26-connected mask. Takes and returns a boolean
    ``(Z, Y, X)`` mask.
    """
    filled = sitk.BinaryFillhole(sitk.GetImageFromArray(mask.astype(np.uint8)), fullyConnected=False)
    return sitk.GetArrayFromImage(filled).astype(bool)


def close_mask(mask: np.ndarray, spacing_mm: tuple[float, float, float], radius_mm: float) -> np.ndarray:
    """Morphological closing with a ball of ``radius_mm``: bridges gaps and notches.

    Dilation and erosion by a ball are thresholds of distance maps in mm. The padding keeps the
    dilation whole at the array's edges.

    Parameters
    ----------
    mask : ndarray of bool, shape (Z, Y, X)
    spacing_mm : tuple of float
        Voxel spacing ``(x, y, z)`` in mm.
    radius_mm : float
        The ball's radius in mm.

    Returns
    -------
    ndarray of bool, shape (Z, Y, X)
    """
    if not mask.any():
        return mask.copy()
    pad = [int(radius_mm // s) + 1 for s in spacing_mm[::-1]]
    dilated = distance_mm(np.pad(mask, [(p, p) for p in pad]), spacing_mm) <= radius_mm
    closed = distance_mm(~dilated, spacing_mm) > radius_mm
    return closed[tuple(slice(p, -p) for p in pad)]


def clean_mask(probability: np.ndarray, spacing_mm: tuple[float, float, float], settings: CleanupSettings) -> np.ndarray:
    """Threshold a probability map and apply the cleanup steps that ``settings`` enable.

    The steps run in this order: closing, largest component, hole filling. They run on the
    bounding box of the thresholded voxels, padded by the closing radius and one voxel: every
    component lies inside it, so the result is the same as on the whole volume, at a fraction of
    the cost.

    Parameters
    ----------
    probability : ndarray, shape (Z, Y, X)
        Probability of the left atrium per voxel.
    spacing_mm : tuple of float
        Voxel spacing ``(x, y, z)`` in mm, as SimpleITK gives it.
    settings : CleanupSettings

    Returns
    -------
    ndarray of bool, shape (Z, Y, X)
        The mask; empty where no voxel reaches the threshold.
    """
    mask = probability >= settings.threshold
    bounds = bounding_box(mask)
    if bounds is None:
        return mask
    margin = [int(np.ceil(settings.closing_radius_mm / s)) + 1 for s in spacing_mm[::-1]]
    box = tuple(slice(max(first - pad, 0), last + pad + 1) for (first, last), pad in zip(bounds, margin))
    cropped = mask[box]
    if settings.closing_radius_mm > 0:
        cropped = close_mask(cropped, spacing_mm, settings.closing_radius_mm)
    if settings.keep_largest_component:
        cropped = keep_largest_component(cropped, spacing_mm, settings.component_gap_mm)
    if settings.fill_holes:
        cropped = fill_holes(cropped)
    cleaned = np.zeros_like(mask)
    cleaned[box] = cropped
    return cleaned
