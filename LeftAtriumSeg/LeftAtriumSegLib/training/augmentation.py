"""Batches of random augmented crops: slice stacks around a centre slice, rotated, scaled,
optionally turned to another axis order and flipped, optionally put through a gamma curve, and
intensity-jittered.

Every random number comes from the one ``numpy.random.Generator`` passed in, in a fixed order,
so a seed gives the same batches.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..model_file import ModelConfig
from .data import PreparedCase
from .settings import TrainingSettings


def sample_batch(
    cases: Sequence[Sequence[PreparedCase]], config: ModelConfig, settings: TrainingSettings, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """One training batch of random augmented crops.

    Parameters
    ----------
    cases : sequence of sequence of PreparedCase
        ``cases[i]`` holds place i of the training list sliced one or more ways
        (``PreparedCase.in_view``); each crop picks a place, then one of its slicings, at random.
    config : ModelConfig
        Its ``slices`` is the stack depth.
    settings : TrainingSettings
        Batch and crop size, the share of crops on the atrium, and the augmentation's ranges.
    rng : numpy.random.Generator
        The sampler's random state, advanced.

    Returns
    -------
    images : torch.Tensor
        float32 ``(batch_size, slices, crop_size, crop_size)``.
    labels : torch.Tensor
        float32 ``(batch_size, 1, crop_size, crop_size)``, 0 or 1: the centre slice's label.
    """
    # Read a larger window than the crop so that rotation and zoom-out find real image.
    window = int(math.ceil(settings.crop_size * math.sqrt(2) * (1 + settings.max_scaling))) + 1
    half_window, half_stack = window // 2, config.slices // 2
    images, labels = [], []
    for _ in range(settings.batch_size):
        slicings = cases[rng.integers(len(cases))]
        # No draw where a place has one slicing: a training list of plain cases then draws the
        # numbers the shipped model's training drew, and its command reproduces it bit for bit.
        case = slicings[rng.integers(len(slicings))] if len(slicings) > 1 else slicings[0]
        depth, height, width = case.image.shape
        on_atrium = rng.random() < settings.foreground_fraction and len(case.foreground_slices) > 0
        if on_atrium:
            z = int(rng.choice(case.foreground_slices))
            ys, xs = np.nonzero(case.label[z])
            pick = rng.integers(len(ys))
            centre_y, centre_x = ys[pick], xs[pick]
        else:
            z, centre_y, centre_x = rng.integers(depth), rng.integers(height), rng.integers(width)
        z_indices = np.clip(np.arange(z - half_stack, z + half_stack + 1), 0, depth - 1)
        y_indices = np.clip(np.arange(centre_y - half_window, centre_y - half_window + window), 0, height - 1)
        x_indices = np.clip(np.arange(centre_x - half_window, centre_x - half_window + window), 0, width - 1)
        image, label = case.image[np.ix_(z_indices, y_indices, x_indices)], case.label[z][np.ix_(y_indices, x_indices)]
        if settings.random_orientation:
            image, label = _random_flips(image, label, rng)
        images.append(image)
        labels.append(label)
    image_batch = torch.from_numpy(np.stack(images))
    label_batch = torch.from_numpy(np.stack(labels)[:, None].astype(np.float32))
    theta = _random_affine(settings.batch_size, rng, settings, zoom=settings.crop_size / window)
    grid = F.affine_grid(theta, [settings.batch_size, 1, settings.crop_size, settings.crop_size], align_corners=False)
    image_batch = F.grid_sample(image_batch, grid, mode="bilinear", padding_mode="border", align_corners=False)
    label_batch = (F.grid_sample(label_batch, grid, mode="bilinear", align_corners=False) >= 0.5).float()
    # Contrast and brightness jitter: scanners and sequences differ in both.
    shape = (settings.batch_size, 1, 1, 1)
    gain = torch.from_numpy(rng.uniform(1 - settings.max_gain_change, 1 + settings.max_gain_change, shape).astype(np.float32))
    offset = torch.from_numpy(rng.uniform(-settings.max_offset, settings.max_offset, shape).astype(np.float32))
    # Drawn after the jitter and only where enabled, so that runs without gamma draw what they drew before.
    if settings.gamma_probability > 0:
        image_batch = random_gamma(image_batch, settings, rng)
    return image_batch * gain + offset, label_batch


def random_gamma(images: torch.Tensor, settings: TrainingSettings, rng: np.random.Generator) -> torch.Tensor:
    """Each crop of ``images`` put through a gamma curve, with chance ``settings.gamma_probability``.

    As nnU-Net's (non-inverted) gamma augmentation: the crop's intensities are mapped to 0-1 by
    its minimum and maximum, raised to the power gamma and mapped back, then given back the
    crop's mean and standard deviation, so only the curve's shape changes. Gamma is drawn from
    ``[min_gamma, 1]`` or ``[1, max_gamma]``, each half the time.

    Parameters
    ----------
    images : torch.Tensor
        float32 ``(N, slices, H, W)``, z-scored.
    settings : TrainingSettings
        ``gamma_probability``, ``min_gamma``, ``max_gamma``.
    rng : numpy.random.Generator
        Advanced by three draws of ``N`` numbers.

    Returns
    -------
    torch.Tensor
        Same shape and type; crops not drawn are unchanged.
    """
    count = images.shape[0]
    chosen = rng.random(count) < settings.gamma_probability
    below_one = rng.random(count) < 0.5
    position = rng.random(count)
    gammas = np.where(below_one, settings.min_gamma + position * (1 - settings.min_gamma),
                      1 + position * (settings.max_gamma - 1))
    result = images.clone()
    for index in np.flatnonzero(chosen):
        crop = images[index].double()
        low, spread = crop.min(), crop.max() - crop.min()
        if not spread > 0:
            continue
        curved = ((crop - low) / spread) ** float(gammas[index]) * spread + low
        deviation = curved.std(unbiased=False)
        if deviation > 0:
            curved = (curved - curved.mean()) / deviation * crop.std(unbiased=False) + crop.mean()
        result[index] = curved.float()
    return result


def _random_affine(batch_size: int, rng: np.random.Generator, settings: TrainingSettings, zoom: float) -> torch.Tensor:
    """``(N, 2, 3)`` affine for ``F.affine_grid``: rotation and isotropic scaling about the centre."""
    angles = np.deg2rad(rng.uniform(-settings.max_rotation_deg, settings.max_rotation_deg, batch_size))
    scales = zoom * rng.uniform(1 - settings.max_scaling, 1 + settings.max_scaling, batch_size)
    cos, sin = np.cos(angles) * scales, np.sin(angles) * scales
    zeros = np.zeros(batch_size)
    theta = np.stack([np.stack([cos, -sin, zeros], 1), np.stack([sin, cos, zeros], 1)], 1)
    return torch.from_numpy(theta.astype(np.float32))


def _random_flips(image: np.ndarray, label: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A stack ``(slices, H, W)`` and its centre slice's label ``(H, W)``, with the stack order,
    rows and columns each reversed or not, and rows and columns swapped or not, at random.
    Applied to every slicing of the model frame, this gives all 48 axis orders and flips."""
    flip_stack, flip_rows, flip_columns, transpose = rng.random(4) < 0.5
    image = image[::-1 if flip_stack else 1, ::-1 if flip_rows else 1, ::-1 if flip_columns else 1]
    label = label[::-1 if flip_rows else 1, ::-1 if flip_columns else 1]
    if transpose:
        image, label = image.transpose(0, 2, 1), label.T
    return np.ascontiguousarray(image), np.ascontiguousarray(label)
