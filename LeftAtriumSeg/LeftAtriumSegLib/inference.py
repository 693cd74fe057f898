"""Run the network over a whole volume and return a probability map on the input's grid."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from .network import UNet2D
from .model_file import ModelConfig
from .preprocessing import normalise_intensity, to_model_frame, to_reference_grid

ProgressCallback = Callable[[float], None]


def slice_stacks(volume: torch.Tensor, slices: int) -> torch.Tensor:
    """``(Z, H, W)`` -> ``(Z, slices, H, W)``: each axial slice with its neighbours, edges repeated."""
    half = slices // 2
    padded = torch.cat([volume[:1].expand(half, -1, -1), volume, volume[-1:].expand(half, -1, -1)])
    return padded.unfold(0, slices, 1).permute(0, 3, 1, 2)


@torch.inference_mode()
def predict_slices(
    network: UNet2D,
    normalised: np.ndarray,
    slices: int,
    z_indices: Sequence[int],
    batch_size: int = 8,
    progress: ProgressCallback | None = None,
) -> np.ndarray:
    """Probabilities, float32 ``(len(z_indices), Y, X)``, for chosen axial slices of a
    normalised ``(Z, Y, X)`` volume (neighbouring slices are read from the whole volume)."""
    device = next(network.parameters()).device
    volume = torch.from_numpy(np.ascontiguousarray(normalised))
    height, width = volume.shape[1:]
    multiple = network.size_multiple
    pad_y, pad_x = (-height) % multiple, (-width) % multiple
    volume = F.pad(volume, (pad_x // 2, pad_x - pad_x // 2, pad_y // 2, pad_y - pad_y // 2), mode="replicate")
    stacks = slice_stacks(volume, slices)
    z_indices = list(z_indices)
    probabilities = np.empty((len(z_indices), height, width), dtype=np.float32)
    for start in range(0, len(z_indices), batch_size):
        batch = stacks[z_indices[start : start + batch_size]].to(device).contiguous(memory_format=torch.channels_last)
        logits = network(batch)[:, 0, pad_y // 2 : pad_y // 2 + height, pad_x // 2 : pad_x // 2 + width]
        probabilities[start : start + batch_size] = torch.sigmoid(logits).cpu().numpy()
        if progress is not None:
            progress(min(start + batch_size, len(z_indices)) / len(z_indices))
    return probabilities


def _scaled(progress: ProgressCallback | None, start: float, end: float) -> ProgressCallback | None:
    return None if progress is None else (lambda fraction: progress(start + (end - start) * fraction))


def predict_frame_probabilities(
    network: UNet2D,
    normalised: np.ndarray,
    slices: int,
    localiser_stride: int = 4,
    margin_voxels: int = 16,
    progress: ProgressCallback | None = None,
) -> np.ndarray:
    """Left-atrium probabilities, float32 ``(Z, Y, X)``, for a normalised model-frame volume.

    A coarse pass over every ``localiser_stride``-th slice finds the atrium; the fine pass
    then covers only its box, widened by ``margin_voxels`` (and the stride along z).
    Voxels outside the box get probability 0. When the coarse pass finds nothing, every
    slice is predicted whole.
    """
    depth = normalised.shape[0]
    coarse_z = list(range(localiser_stride // 2, depth, localiser_stride))
    coarse = predict_slices(network, normalised, slices, coarse_z, progress=_scaled(progress, 0.0, 0.3))
    hits = np.nonzero(coarse >= 0.5)
    if len(hits[0]) == 0:
        return predict_slices(network, normalised, slices, range(depth), progress=_scaled(progress, 0.3, 1.0))
    z_hits = np.array(coarse_z)[hits[0]]
    z_margin = margin_voxels // 2 + localiser_stride
    box = (
        slice(max(int(z_hits.min()) - z_margin, 0), min(int(z_hits.max()) + z_margin + 1, depth)),
        *(slice(max(int(h.min()) - margin_voxels, 0), min(int(h.max()) + margin_voxels + 1, n))
          for h, n in zip(hits[1:], normalised.shape[1:])),
    )
    probabilities = np.zeros(normalised.shape, dtype=np.float32)
    probabilities[box] = predict_slices(
        network, normalised[:, box[1], box[2]], slices, range(box[0].start, box[0].stop),
        progress=_scaled(progress, 0.3, 1.0),
    )
    return probabilities


def predict_probability_map(
    image: sitk.Image,
    network: UNet2D,
    config: ModelConfig,
    progress: ProgressCallback | None = None,
) -> sitk.Image:
    """Probability of left atrium for every voxel of ``image``, on exactly its grid (float32)."""
    framed = to_model_frame(image, config.frame)
    normalised = normalise_intensity(sitk.GetArrayViewFromImage(framed))
    probabilities = predict_frame_probabilities(network, normalised, config.slices, progress=progress)
    probability_frame = sitk.GetImageFromArray(probabilities)
    probability_frame.CopyInformation(framed)
    return to_reference_grid(probability_frame, image)
