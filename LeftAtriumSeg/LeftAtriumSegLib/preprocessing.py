"""Bring images into the model's frame and normalise intensities.

The model frame is a fixed anatomical orientation (axis codes as in
``SimpleITK.DICOMOrient``) at a fixed voxel spacing. Arrays taken from SimpleITK images are
indexed ``[z, y, x]``; a *view* reorders them so that its slicing axis comes first.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from .errors import InputImageError
from .io import MAX_VOXELS


# Axis order that turns a model-frame array ``(Z, Y, X)`` into ``(slice, row, column)`` of a
# view; in the LPS frame z runs inferior-superior, y anterior-posterior, x right-left. The names
# are the header's: where a header mislabels the anatomy (Task02_Heart's "axial" slices are
# anatomically sagittal), so do they.
VIEW_AXES: dict[str, tuple[int, int, int]] = {
    "axial": (0, 1, 2),
    "coronal": (1, 0, 2),
    "sagittal": (2, 0, 1),
}


def to_view(volume: np.ndarray, view: str) -> np.ndarray:
    """A model-frame ``(Z, Y, X)`` array as the view's ``(slice, row, column)`` array (no copy).

    ``view`` is a key of ``VIEW_AXES``.
    """
    return volume.transpose(VIEW_AXES[view])


def from_view(volume: np.ndarray, view: str) -> np.ndarray:
    """Inverse of ``to_view``: a view's ``(slice, row, column)`` array as ``(Z, Y, X)`` (no copy)."""
    return volume.transpose(np.argsort(VIEW_AXES[view]))


# A model frame's voxel size is bounded because every scan is resampled to it whole: at 0.5 mm a
# chest MRI's field of view is already ~150 million voxels.
MIN_FRAME_SPACING_MM, MAX_FRAME_SPACING_MM = 0.5, 10.0
ANATOMICAL_AXES = ("RL", "AP", "SI")  # each axis code takes one letter of each pair


@dataclass(frozen=True)
class ModelFrame:
    """Orientation and spacing the network was trained in.

    Attributes
    ----------
    orientation : str
        Axis code as ``SimpleITK.DICOMOrient`` takes it: one letter of each of RL, AP and SI,
        each the direction its axis points to (``orientation_direction``).
    spacing_mm : tuple of float
        Voxel spacing ``(x, y, z)`` in mm, each ``MIN_FRAME_SPACING_MM``-``MAX_FRAME_SPACING_MM``.

    Raises
    ------
    ValueError
        For settings no model could have been trained in (they come from model files, which may
        be damaged or made by anyone).
    """

    orientation: str = "LPS"
    spacing_mm: tuple[float, float, float] = (1.25, 1.25, 1.25)  # (x, y, z)

    def __post_init__(self) -> None:
        letters = self.orientation if isinstance(self.orientation, str) else ""
        axes = sorted(pair for letter in letters for pair in ANATOMICAL_AXES if letter in pair)
        if len(letters) != 3 or axes != sorted(ANATOMICAL_AXES):
            raise ValueError(f"orientation must be a code such as 'LPS', one letter of each of "
                             f"{'/'.join(ANATOMICAL_AXES)}, got {self.orientation!r}")
        spacing = self.spacing_mm
        if not (isinstance(spacing, tuple) and len(spacing) == 3 and all(
                isinstance(s, (int, float)) and not isinstance(s, bool)
                and MIN_FRAME_SPACING_MM <= s <= MAX_FRAME_SPACING_MM for s in spacing)):
            raise ValueError(f"frame spacing must be three numbers of {MIN_FRAME_SPACING_MM}-"
                             f"{MAX_FRAME_SPACING_MM} mm, got {spacing!r}")


def orientation_direction(orientation: str) -> np.ndarray:
    """The direction matrix (LPS) of a grid whose axes run as an orientation code says.

    Each letter is where its axis points to: ``LPS`` -> identity, ``RAS`` -> diag(-1, -1, 1),
    ``PSL`` -> axes permuted.

    Returns
    -------
    ndarray, shape (3, 3)
        Column ``i`` is the direction of the grid's axis ``i`` in LPS.
    """
    toward = {"L": (0, 1.0), "R": (0, -1.0), "P": (1, 1.0), "A": (1, -1.0), "S": (2, 1.0), "I": (2, -1.0)}
    direction = np.zeros((3, 3))
    for column, letter in enumerate(orientation):
        row, sign = toward[letter]
        direction[row, column] = sign
    return direction


def to_model_frame(
    image: sitk.Image, frame: ModelFrame, interpolator: int = sitk.sitkLinear
) -> sitk.Image:
    """Resample ``image`` onto the model frame.

    The frame is a grid whose axes are the patient's axes in ``frame.orientation``, at
    ``frame.spacing_mm``, covering the image's whole field of view. An oblique acquisition is
    turned onto the patient's axes, so the networks see the anatomy as their training data showed
    it whatever the plane the scan was acquired in; the grid is the bounding box of the tilted
    field of view, centred on it, and where it reaches beyond the scan it holds 0. A scan acquired
    along the patient's axes is only permuted and flipped (``DICOMOrient``) and resampled onto the
    grid of the same extent, centred on the old one.

    Parameters
    ----------
    image : SimpleITK.Image
        A 3D scan.
    frame : ModelFrame
    interpolator : int, optional
        SimpleITK interpolator: linear for intensities, ``sitkNearestNeighbor`` for a label map.

    Returns
    -------
    SimpleITK.Image
        float32, or ``image``'s pixel type with nearest-neighbour interpolation.

    Raises
    ------
    InputImageError
        For a frame of more than ``io.MAX_VOXELS`` voxels.
    """
    oriented = sitk.DICOMOrient(image, frame.orientation)
    in_size = np.array(oriented.GetSize())
    in_spacing = np.array(oriented.GetSpacing())
    out_spacing = np.array(frame.spacing_mm, dtype=float)
    direction = orientation_direction(frame.orientation)
    # The field of view's extent along each of the frame's axes: the scan's own extent where it
    # was acquired along them, the bounding box of the tilted box where it was not.
    tilt = direction.T @ np.array(oriented.GetDirection()).reshape(3, 3)
    extent = np.abs(tilt) @ (in_size * in_spacing)
    out_size = np.maximum(np.round(extent / out_spacing), 1).astype(int)
    if np.prod(out_size, dtype=float) > MAX_VOXELS:  # a header's wrong spacing, say: memory runs out first
        raise InputImageError(
            f"the scan spans {' x '.join(f'{e:.0f}' for e in extent)} mm: {np.prod(out_size, dtype=float):.1e} voxels "
            f"on the model's {'/'.join(f'{s:g}' for s in out_spacing)} mm grid, over the {MAX_VOXELS:.0e} it can take "
            "(a wrong voxel spacing?)")
    in_centre = np.array(oriented.TransformContinuousIndexToPhysicalPoint((in_size - 1) / 2.0))
    out_origin = in_centre - direction @ ((out_size - 1) / 2.0 * out_spacing)
    return sitk.Resample(
        oriented,
        [int(s) for s in out_size],
        sitk.Transform(),
        interpolator,
        [float(v) for v in out_origin],
        [float(v) for v in out_spacing],
        [float(v) for v in direction.ravel()],
        0.0,
        sitk.sitkFloat32 if interpolator != sitk.sitkNearestNeighbor else image.GetPixelID(),
    )


def field_of_view(image: sitk.Image, framed: sitk.Image) -> np.ndarray | None:
    """Mask of the voxels of ``framed`` that the scan covers.

    Parameters
    ----------
    image : SimpleITK.Image
        The scan as read.
    framed : SimpleITK.Image
        ``image`` in the model frame (``to_model_frame``).

    Returns
    -------
    ndarray of bool, shape (Z, Y, X), or None
        True where ``framed``'s voxels lie inside the scan; None where it covers them all (a scan
        acquired along the patient's axes).
    """
    direction = np.array(image.GetDirection()).reshape(3, 3)
    if np.allclose(np.abs(direction), np.round(np.abs(direction))):
        return None
    covered = sitk.Image(image.GetSize(), sitk.sitkUInt8) + 1
    covered.CopyInformation(image)
    inside = sitk.Resample(covered, framed, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return sitk.GetArrayFromImage(inside) > 0


def box_with_ring(box_values: np.ndarray, box: tuple[slice, slice, slice], shape: tuple[int, int, int],
                  frame_grid: sitk.Image) -> sitk.Image:
    """The ``box`` part of a model-frame volume that is 0 outside it, with a ring of one zero voxel
    around it where the frame has one, as an image lying where that part lies in the frame.

    Resampled, it gives what the whole volume would: the ring keeps the interpolation across the
    box's faces, and beyond the ring's outer half voxel the whole volume gives 0 too.

    Parameters
    ----------
    box_values : ndarray
        The volume's values within ``box``.
    box : tuple of slice
        ``(Z, Y, X)`` slices with integer bounds.
    shape : tuple of int
        The whole volume's ``(Z, Y, X)`` shape.
    frame_grid : SimpleITK.Image
        An image with the frame's origin, spacing and direction (its size does not matter).

    Returns
    -------
    SimpleITK.Image
        float32.
    """
    ring = tuple(slice(max(extent.start - 1, 0), min(extent.stop + 1, n)) for extent, n in zip(box, shape))
    values = np.zeros([extent.stop - extent.start for extent in ring], dtype=np.float32)
    values[tuple(slice(b.start - r.start, b.stop - r.start) for b, r in zip(box, ring))] = box_values
    part = sitk.GetImageFromArray(values)
    part.SetSpacing(frame_grid.GetSpacing())
    part.SetDirection(frame_grid.GetDirection())
    part.SetOrigin(frame_grid.TransformIndexToPhysicalPoint([extent.start for extent in ring[::-1]]))
    return part


def to_reference_grid(image: sitk.Image, reference: sitk.Image) -> sitk.Image:
    """Linearly resample a float image (a probability map, say) onto ``reference``'s grid.

    Only the part of ``reference``'s grid within ``image``'s reach is resampled, the rest is 0 as
    resampling gives it there: the same image at a fraction of the cost when ``image`` is small
    (``box_with_ring``).

    Returns
    -------
    SimpleITK.Image
        float32 on ``reference``'s grid, 0 where it reaches beyond ``image``.
    """
    corners = [reference.TransformPhysicalPointToContinuousIndex(
                   image.TransformContinuousIndexToPhysicalPoint([(n - 0.5) if high else -0.5 for n, high in zip(image.GetSize(), c)]))
               for c in np.ndindex(2, 2, 2)]
    low = np.clip(np.floor(np.min(corners, axis=0)).astype(int), 0, reference.GetSize())
    high = np.clip(np.ceil(np.max(corners, axis=0)).astype(int) + 1, 0, reference.GetSize())
    result = sitk.Image(reference.GetSize(), sitk.sitkFloat32)  # all 0
    result.CopyInformation(reference)
    if np.all(high > low):
        grid = sitk.Image([int(n) for n in high - low], sitk.sitkFloat32)
        grid.SetSpacing(reference.GetSpacing())
        grid.SetDirection(reference.GetDirection())
        grid.SetOrigin(reference.TransformIndexToPhysicalPoint([int(i) for i in low]))
        resampled = sitk.Resample(image, grid, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
        # Assigning to a slice pastes in place, where sitk.Paste would hold a second whole image.
        result[int(low[0]):int(high[0]), int(low[1]):int(high[1]), int(low[2]):int(high[2])] = resampled
    return result


_BLOCK = 1 << 16  # voxels: a block's float64 copy stays in the cache


def percentiles(values: np.ndarray, percents: list[float]) -> list[float]:
    """``np.percentile(values, percents)`` (its default, linear method) of finite values, the same
    numbers in half the time on a whole scan.

    ``np.percentile`` partitions all of the values, a copy of them; here each pair of neighbouring
    order statistics it interpolates between is looked for among the values in a narrow range
    around a sorted sample's estimate, and all of them are partitioned only where that range
    misses the pair.

    Parameters
    ----------
    values : ndarray
        Finite values, any shape.
    percents : list of float
        Each 0-100.

    Returns
    -------
    list of float
    """
    values = values.reshape(-1)
    count = values.size
    sample = np.sort(values[:: max(count // 20_000, 1)])
    slack = 4 * math.isqrt(sample.size) + 8  # sample places around the estimate: many standard errors
    found = []
    for percent in percents:
        position = percent / 100 * (count - 1)
        rank = min(math.floor(position), count - 2) if count > 1 else 0
        estimate = round(rank / max(count - 1, 1) * (sample.size - 1))
        low, high = sample[max(estimate - slack, 0)], sample[min(estimate + slack + 1, sample.size - 1)]
        below = np.count_nonzero(values < low)
        window = values[(values >= low) & (values <= high)]
        pair = window if below <= rank and rank + 1 < below + window.size else values
        offset = below if pair is window else 0
        ranks = [rank - offset, min(rank + 1, count - 1) - offset]
        first, second = np.partition(pair, ranks)[ranks]
        # numpy's interpolation: the difference in the values' own type, counted from the nearer end
        difference, fraction = float(second - first), position - rank
        found.append(float(first) + difference * fraction if fraction < 0.5 else float(second) - difference * (1 - fraction))
    return found


def normalise_intensity(volume: np.ndarray, inside: np.ndarray | None = None) -> np.ndarray:
    """Clip to the 0.5-99.5th percentiles, then z-score; MRI intensities have no absolute scale.

    Parameters
    ----------
    volume : ndarray, shape (Z, Y, X)
        Intensities in the model frame.
    inside : ndarray of bool, shape (Z, Y, X), optional
        Where the scan is (``field_of_view``); the percentiles, mean and spread are taken there
        only, so that the empty corners of a tilted scan's frame do not shift them.

    Returns
    -------
    ndarray of float32, shape (Z, Y, X)

    Raises
    ------
    ValueError
        For a constant volume, which has no usable contrast.
    """
    voxels = volume if inside is None else volume[inside]
    low, high = percentiles(voxels, [0.5, 99.5])
    # Clipped in float32, the statistics and the z-score in float64 (cast explicitly: numpy 1's
    # promotion would keep float32 - float64 scalar in float32), block by block: the values of
    # float64 throughout, without whole float64 copies of the volume. The contiguous copy makes
    # reshape(-1) a view of it, whatever the input's layout.
    clipped = np.ascontiguousarray(np.clip(volume.astype(np.float32, copy=False), np.float32(low), np.float32(high)))
    sample = (clipped if inside is None else clipped[inside]).reshape(-1)
    mean = sample.mean(dtype=np.float64)
    squares = sum(float(np.square(sample[i : i + _BLOCK].astype(np.float64) - mean).sum())
                  for i in range(0, sample.size, _BLOCK))
    std = math.sqrt(squares / sample.size)
    if not std > 0:
        raise ValueError("image has no contrast (constant intensity)")
    flat = clipped.reshape(-1)
    for i in range(0, flat.size, _BLOCK):
        block = flat[i : i + _BLOCK].astype(np.float64)
        block -= mean
        block /= std
        flat[i : i + _BLOCK] = block
    return clipped
