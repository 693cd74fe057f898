"""Run the network over a whole volume and return a probability map on the input's grid."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

import numpy as np
import SimpleITK as sitk

from .model_file import ModelConfig
from .postprocessing import keep_largest_component
from .preprocessing import (
    VIEW_AXES,
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
    padded = np.pad(normalised.astype(np.float32, copy=False),
                    ((0, 0), (pad_y // 2, pad_y - pad_y // 2), (pad_x // 2, pad_x - pad_x // 2)), mode="edge")
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


def predict_frame_probabilities(
    networks: Mapping[str, SliceNetwork],
    normalised: np.ndarray,
    slices: int,
    localiser_stride: int = 4,
    margin_voxels: int = 32,
    progress: ProgressCallback | None = None,
) -> np.ndarray:
    """Left-atrium probabilities, float32 ``(Z, Y, X)``, for a normalised model-frame volume:
    the mean over ``networks``, one per view (slicing direction, see ``VIEW_AXES``).

    The first view localises: a coarse pass over every ``localiser_stride``-th of its slices
    finds the atrium, the largest connected group of its hits and any other group within
    ``margin_voxels`` of it. Every view then predicts only the atrium's box, widened by
    ``margin_voxels`` in-plane and by half of it plus the stride along the localiser's slicing
    axis; voxels outside it get probability 0. When the coarse pass finds nothing, every view
    predicts the whole volume.

    The margin also gives the networks context: in 1.5's cross-validation, 16 voxels lost up
    to 3 mL of atrium near the box's edge; 32 scored as well as the whole volume
    (docs/model-development.md, "Localiser").
    """
    views = list(networks)
    localiser = to_view(normalised, views[0])
    depth = localiser.shape[0]
    # A volume thinner than the stride still gets one coarse slice: none crashed the component search.
    coarse_indices = list(range(min(localiser_stride // 2, depth - 1), depth, localiser_stride))
    coarse = predict_slices(networks[views[0]], localiser, slices, coarse_indices,
                            progress=_scaled(progress, 0.0, 0.2))
    # Stray hits away from the atrium used to stretch the box (1.5's cross-validation on
    # msd_heart: 1.97 instead of 1.61 million voxels on average). Distances here are in voxels;
    # coarse slices lie localiser_stride voxels apart.
    atrium_hits = keep_largest_component(coarse >= 0.5, (1, 1, localiser_stride), gap_mm=margin_voxels)
    hits = np.nonzero(atrium_hits)
    if len(hits[0]) == 0:
        localiser_box = tuple(slice(0, n) for n in localiser.shape)
    else:
        slice_hits = np.array(coarse_indices)[hits[0]]
        slice_margin = margin_voxels // 2 + localiser_stride
        localiser_box = (
            slice(max(int(slice_hits.min()) - slice_margin, 0), min(int(slice_hits.max()) + slice_margin + 1, depth)),
            *(slice(max(int(h.min()) - margin_voxels, 0), min(int(h.max()) + margin_voxels + 1, n))
              for h, n in zip(hits[1:], localiser.shape[1:])),
        )
    box = tuple(localiser_box[VIEW_AXES[views[0]].index(axis)] for axis in range(3))  # in (Z, Y, X)
    probabilities = np.zeros(normalised.shape, dtype=np.float32)
    share = 0.8 / len(views)  # of the progress, per view
    for index, view in enumerate(views):
        slice_range, rows, columns = (box[axis] for axis in VIEW_AXES[view])
        # Neighbouring slices outside the box still feed the network's input stack.
        volume = to_view(normalised, view)[:, rows, columns]
        predicted = predict_slices(networks[view], volume, slices, range(slice_range.start, slice_range.stop),
                                   progress=_scaled(progress, 0.2 + index * share, 0.2 + (index + 1) * share))
        probabilities[box] += from_view(predicted, view)
    probabilities[box] /= len(views)
    return probabilities


def predict_probability_map(
    image: sitk.Image,
    networks: Mapping[str, SliceNetwork],
    config: ModelConfig,
    progress: ProgressCallback | None = None,
) -> sitk.Image:
    """Probability of left atrium for every voxel of ``image``, on exactly its grid (float32)."""
    framed = to_model_frame(image, config.frame)
    normalised = normalise_intensity(sitk.GetArrayViewFromImage(framed), field_of_view(image, framed))
    probabilities = predict_frame_probabilities(networks, normalised, config.slices, progress=progress)
    probability_frame = sitk.GetImageFromArray(probabilities)
    probability_frame.CopyInformation(framed)
    return to_reference_grid(probability_frame, image)
