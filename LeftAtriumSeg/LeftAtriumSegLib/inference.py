"""Run the network over a whole volume and return a probability map on the input's grid."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import SimpleITK as sitk

from .model_file import ModelConfig
from .postprocessing import keep_largest_component
from .preprocessing import (
    VIEW_AXES,
    box_with_ring,
    field_of_view,
    from_view,
    normalise_intensity,
    to_model_frame,
    to_reference_grid,
    to_view,
)

ProgressCallback = Callable[[float], None]


class SliceNetwork(Protocol):
    """One view's network as inference runs it: ``onnx_network.OnnxSliceNetwork`` (``segment``)
    or ``network.TorchSliceNetwork`` (networks in training, GPU benchmarks)."""

    size_multiple: int  # slice height and width must be multiples of it

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """float32 ``(N, slices, H, W)`` -> logits, float32 ``(N, 1, H, W)``."""
        ...


def slice_stacks(volume: np.ndarray, slices: int, z_indices: Sequence[int]) -> np.ndarray:
    """``(Z, H, W)`` -> ``(len(z_indices), slices, H, W)``: each chosen slice with its
    neighbours, the first and last slice repeated beyond the volume's ends."""
    half = slices // 2
    neighbours = np.clip(np.add.outer(np.asarray(z_indices), np.arange(-half, half + 1)), 0, volume.shape[0] - 1)
    return volume[neighbours]


def predict_slices(
    network: SliceNetwork,
    normalised: np.ndarray,
    slices: int,
    z_indices: Sequence[int],
    batch_size: int = 8,
    progress: ProgressCallback | None = None,
) -> np.ndarray:
    """Probabilities, float32 ``(len(z_indices), Y, X)``, for chosen slices of a normalised
    ``(Z, Y, X)`` volume, slicing along its first axis (neighbours are read from the whole volume)."""
    height, width = normalised.shape[1:]
    multiple = network.size_multiple
    pad_y, pad_x = (-height) % multiple, (-width) % multiple
    padded = normalised.astype(np.float32, copy=False)
    if pad_y or pad_x:  # np.pad copies the whole volume even to add nothing
        padded = np.pad(padded, ((0, 0), (pad_y // 2, pad_y - pad_y // 2), (pad_x // 2, pad_x - pad_x // 2)), mode="edge")
    z_indices = list(z_indices)
    probabilities = np.empty((len(z_indices), height, width), dtype=np.float32)
    for start in range(0, len(z_indices), batch_size):
        logits = network(slice_stacks(padded, slices, z_indices[start : start + batch_size]))
        logits = logits[:, 0, pad_y // 2 : pad_y // 2 + height, pad_x // 2 : pad_x // 2 + width]
        # The logistic function in a form that cannot overflow; scipy.special.expit would cost
        # segment its 0.3-0.5 s import.
        probabilities[start : start + batch_size] = 0.5 + 0.5 * np.tanh(0.5 * logits)
        if progress is not None:
            progress(min(start + batch_size, len(z_indices)) / len(z_indices))
    return probabilities


def _scaled(progress: ProgressCallback | None, start: float, end: float) -> ProgressCallback | None:
    return None if progress is None else (lambda fraction: progress(start + (end - start) * fraction))


@dataclass(frozen=True)
class FramePrediction:
    """The networks' output for a model-frame volume, and what it says of its own reliability.

    box_probabilities : float32, the mean over the views within ``box`` (the frame is 0 outside it)
    box : the (Z, Y, X) slices the views predicted, after any growth
    shape : the model-frame volume's (Z, Y, X) shape
    view_agreement : the smallest Dice between one view's mask (its probabilities >= 0.5) and the
        mean's mask; 1 where both are empty. Views that disagree mark a scan the model is unsure of.
    box_contact : voxels of the mean's mask on faces of ``box`` that lie inside the volume: atrium
        the box may have cut off, even after growing
    uncertain_share : voxels of probability 0.2-0.5 per voxel of the mask (0.5 and over): where the
        networks half see more atrium than they segment
    faint_share : the share of the mask's voxels under probability 0.8: a mask the networks only
        half believe, as where they lost part of the atrium
    """

    box_probabilities: np.ndarray
    box: tuple[slice, slice, slice]
    shape: tuple[int, int, int]
    view_agreement: float
    box_contact: int
    uncertain_share: float
    faint_share: float

    @property
    def probabilities(self) -> np.ndarray:
        """float32 (Z, Y, X): the mean over the views on the whole frame."""
        whole = np.zeros(self.shape, dtype=np.float32)
        whole[self.box] = self.box_probabilities
        return whole


def _localise(network: SliceNetwork, localiser: np.ndarray, slices: int, stride: int, margin: int,
              progress: ProgressCallback | None) -> list[list[int]] | None:
    """The atrium's extent in the localiser view's (slice, row, column) order, ``[[first, last], ...]``
    (inclusive), from a coarse pass over every ``stride``-th slice: the largest connected group of
    hits and any other group within ``margin`` voxels of it, widened by the stride across slices;
    None where the pass finds nothing."""
    depth = localiser.shape[0]
    # A volume thinner than the stride still gets one coarse slice: none crashed the component search.
    coarse_indices = list(range(min(stride // 2, depth - 1), depth, stride))
    coarse = predict_slices(network, localiser, slices, coarse_indices, progress=progress)
    # Stray hits away from the atrium stretched the box (msd_heart: 1.97 instead of 1.61 million
    # voxels on average). Distances here are in voxels; coarse slices lie ``stride`` voxels apart.
    atrium_hits = keep_largest_component(coarse >= 0.5, (1, 1, stride), gap_mm=margin)
    hits = np.nonzero(atrium_hits)
    if len(hits[0]) == 0:
        return None
    slice_hits = np.array(coarse_indices)[hits[0]]
    return [[int(slice_hits.min()) - stride, int(slice_hits.max()) + stride],
            *([int(h.min()), int(h.max())] for h in hits[1:])]


def voxels_on_faces(mask: np.ndarray, faces: Iterable[tuple[int, int]]) -> int:
    """Voxels of ``mask`` on the given faces of its array, each face ``(axis, 0)`` for the axis's
    first index or ``(axis, 1)`` for its last; a voxel on an edge or corner of two is counted once."""
    count, rest = 0, mask
    for axis, side in sorted(set(faces)):
        if rest.shape[axis] == 0:
            break  # every voxel lies on faces already counted
        index: list = [slice(None)] * mask.ndim
        index[axis] = -side  # 0 or -1: the face, a view
        count += int(np.count_nonzero(rest[tuple(index)]))
        index[axis] = slice(1, None) if side == 0 else slice(None, -1)
        rest = rest[tuple(index)]  # what later faces may still count
    return count


def _contact(mask: np.ndarray, box: tuple[slice, ...], shape: tuple[int, ...]) -> dict[tuple[int, int], int]:
    """Voxels of a ``mask`` of the box on each of the box's faces that lie inside the volume:
    ``{(axis, 0 for the low face or 1 for the high one): voxels}``."""
    faces = {}
    for axis, extent in enumerate(box):
        if extent.start > 0:
            faces[(axis, 0)] = int(np.count_nonzero(np.take(mask, 0, axis=axis)))
        if extent.stop < shape[axis]:
            faces[(axis, 1)] = int(np.count_nonzero(np.take(mask, -1, axis=axis)))
    return faces


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = np.count_nonzero(a) + np.count_nonzero(b)
    return 1.0 if total == 0 else 2.0 * np.count_nonzero(a & b) / total


# Slices beyond the atrium's extent that each view predicts along its slicing axis; its in-plane
# crop keeps the whole margin, which is the networks' context (docs/model-development.md, "Speed").
VIEW_SLICE_MARGIN = 8


def predict_frame(
    networks: Mapping[str, SliceNetwork],
    normalised: np.ndarray,
    slices: int,
    localiser_stride: int = 8,
    margin_voxels: int = 32,
    progress: ProgressCallback | None = None,
) -> FramePrediction:
    """Left-atrium probabilities for a normalised model-frame ``(Z, Y, X)`` volume: the mean over
    ``networks``, one per view (slicing direction, see ``VIEW_AXES``), with its reliability.

    The first view localises the atrium (``_localise``). Every view then predicts the atrium's box,
    its extent widened by ``margin_voxels``, and there only the slices within the extent and
    ``VIEW_SLICE_MARGIN`` beyond it along its own slicing axis (a voxel no view predicts is 0).
    Where the mean's mask reaches a face of the box inside the volume, the extent grows by the
    margin beyond that face and the views predict again (twice at most): a box that cut the atrium
    off would otherwise lose what lay beyond it.

    The margin gives the networks context: 16 voxels lost atrium near the box's edge where 32 scored
    as well as the whole volume (docs/model-development.md, "Localiser", "Speed").
    """
    views = list(networks)
    found = _localise(networks[views[0]], to_view(normalised, views[0]), slices, localiser_stride, margin_voxels,
                      _scaled(progress, 0.0, 0.2))
    extent = ([found[VIEW_AXES[views[0]].index(axis)] for axis in range(3)] if found is not None  # in (Z, Y, X)
              else [[0, n - 1] for n in normalised.shape])
    for attempt in range(3):
        box = tuple(slice(max(first - margin_voxels, 0), min(last + margin_voxels + 1, n))
                    for (first, last), n in zip(extent, normalised.shape))
        view_probabilities = []
        share = 0.8 / len(views)  # of the progress, per view; a second pass after growing reports none
        for index, view in enumerate(views):
            axis, rows, columns = VIEW_AXES[view][0], *(box[a] for a in VIEW_AXES[view][1:])
            first = max(extent[axis][0] - VIEW_SLICE_MARGIN, box[axis].start)
            last = min(extent[axis][1] + VIEW_SLICE_MARGIN + 1, box[axis].stop)
            # Neighbouring slices outside the box still feed the network's input stack.
            volume = to_view(normalised, view)[:, rows, columns]
            view_progress = _scaled(progress, 0.2 + index * share, 0.2 + (index + 1) * share) if attempt == 0 else None
            predicted = np.zeros((box[axis].stop - box[axis].start, *volume.shape[1:]), dtype=np.float32)
            predicted[first - box[axis].start : last - box[axis].start] = predict_slices(
                networks[view], volume, slices, range(first, last), progress=view_progress)
            view_probabilities.append(from_view(predicted, view))
        mean = sum(view_probabilities) / len(views)
        mask = mean >= 0.5
        faces = _contact(mask, box, normalised.shape)
        if attempt == 2 or not any(faces.values()):
            break
        for (axis, side), touching in faces.items():
            if touching:
                extent[axis][side] += margin_voxels if side else -margin_voxels
    agreement = min(_dice(view >= 0.5, mask) for view in view_probabilities)
    segmented = max(np.count_nonzero(mask), 1)
    uncertain = np.count_nonzero((mean >= 0.2) & (mean < 0.5)) / segmented
    faint = np.count_nonzero(mask & (mean < 0.8)) / segmented
    return FramePrediction(mean.astype(np.float32, copy=False), box, normalised.shape, agreement, voxels_on_faces(mask, faces),
                           float(uncertain), float(faint))


@dataclass(frozen=True)
class Prediction:
    """The networks' output on an image's own grid, with the frame's reliability measures."""

    probability_map: sitk.Image  # float32, on exactly the image's grid
    frame: FramePrediction


def predict(
    image: sitk.Image,
    networks: Mapping[str, SliceNetwork],
    config: ModelConfig,
    progress: ProgressCallback | None = None,
) -> Prediction:
    """Probability of left atrium for every voxel of ``image``, on exactly its grid."""
    framed = to_model_frame(image, config.frame)
    normalised = normalise_intensity(sitk.GetArrayViewFromImage(framed), field_of_view(image, framed))
    frame_grid = framed[:1, :1, :1]  # the frame's geometry, without its pixels: 4 bytes a voxel
    del framed
    frame = predict_frame(networks, normalised, config.slices, progress=progress)
    del normalised
    return Prediction(to_reference_grid(box_with_ring(frame.box_probabilities, frame.box, frame.shape, frame_grid), image),
                      frame)
