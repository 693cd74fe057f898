"""Multi-view inference puts every view's slices back where they came from."""

import numpy as np
import pytest
import torch
from LeftAtriumSegLib.inference import predict_frame_probabilities
from LeftAtriumSegLib.preprocessing import VIEW_AXES, from_view, to_view
from torch import nn


class CentreSliceLogits(nn.Module):
    """Stand-in network whose logits are 4x its input stack's centre slice: the probability
    map it yields is known voxel by voxel, so any misplaced slice shows."""

    size_multiple = 4

    def __init__(self, slices: int):
        super().__init__()
        self.centre = slices // 2
        self.anchor = nn.Parameter(torch.zeros(()))  # gives the module a device

    def forward(self, stacks: torch.Tensor) -> torch.Tensor:
        return 4 * stacks[:, self.centre : self.centre + 1] + self.anchor


def _off_centre_ellipsoid(shape=(30, 34, 38)) -> np.ndarray:
    """Boolean ``(Z, Y, X)`` ellipsoid, off-centre and with unequal radii so that a swapped
    or flipped axis moves it."""
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    return ((z - 11) / 6) ** 2 + ((y - 20) / 9) ** 2 + ((x - 14) / 5) ** 2 <= 1


@pytest.mark.parametrize("view", sorted(VIEW_AXES))
def test_to_view_and_back(view):
    volume = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    assert to_view(volume, view).shape[0] == volume.shape[VIEW_AXES[view][0]]
    np.testing.assert_array_equal(from_view(to_view(volume, view), view), volume)


@pytest.mark.parametrize("views", [("axial",), ("coronal",), ("sagittal",), ("axial", "coronal", "sagittal")])
def test_every_view_maps_back_onto_the_model_frame(views):
    atrium = _off_centre_ellipsoid()
    normalised = np.where(atrium, 2.0, -2.0).astype(np.float32)
    networks = {view: CentreSliceLogits(slices=5) for view in views}
    probabilities = predict_frame_probabilities(networks, normalised, slices=5)
    assert probabilities.shape == atrium.shape
    np.testing.assert_array_equal(probabilities >= 0.5, atrium)
    expected_inside = 1 / (1 + np.exp(-8.0))
    np.testing.assert_allclose(probabilities[atrium], expected_inside, rtol=1e-5)


def test_views_are_averaged():
    atrium = _off_centre_ellipsoid()
    normalised = np.where(atrium, 2.0, -2.0).astype(np.float32)
    silent = CentreSliceLogits(slices=5)
    silent.anchor.data.fill_(-1e4)  # a view that sees nothing anywhere
    probabilities = predict_frame_probabilities({"axial": CentreSliceLogits(5), "sagittal": silent}, normalised, slices=5)
    np.testing.assert_allclose(probabilities[atrium], 0.5 / (1 + np.exp(-8.0)), rtol=1e-5)


def test_box_follows_the_largest_group_of_coarse_hits():
    """A small bright blob far from the atrium is left outside the predicted box (probability 0);
    a fragment within the margin stays in, and both it and the atrium are predicted voxel by voxel."""
    shape = (30, 34, 100)
    atrium = _off_centre_ellipsoid(shape)
    fragment = np.zeros(shape, dtype=bool)
    fragment[9:14, 15:20, 26:29] = True  # meets coarse slice 10, 6 voxels from the atrium
    decoy = np.zeros(shape, dtype=bool)
    decoy[9:14, 15:20, 80:85] = True  # 60 voxels from the atrium, margin 32
    normalised = np.where(atrium | fragment | decoy, 2.0, -2.0).astype(np.float32)
    probabilities = predict_frame_probabilities({"axial": CentreSliceLogits(5)}, normalised, slices=5)
    np.testing.assert_array_equal(probabilities >= 0.5, atrium | fragment)
    assert not probabilities[:, :, 70:].any()


class AutocastProbe(CentreSliceLogits):
    """Records whether each forward pass ran under bfloat16 autocast."""

    def __init__(self, slices: int):
        super().__init__(slices)
        self.autocast_seen: list[bool] = []

    def forward(self, stacks: torch.Tensor) -> torch.Tensor:
        self.autocast_seen.append(torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16)
        return super().forward(stacks)


@pytest.mark.parametrize("bfloat16", [False, True])
def test_bfloat16_switches_autocast_for_every_pass(bfloat16):
    atrium = _off_centre_ellipsoid()
    probe = AutocastProbe(5)
    probabilities = predict_frame_probabilities({"axial": probe}, np.where(atrium, 2.0, -2.0).astype(np.float32),
                                                slices=5, bfloat16=bfloat16)
    assert probe.autocast_seen and all(seen == bfloat16 for seen in probe.autocast_seen)
    assert probabilities.dtype == np.float32
    np.testing.assert_array_equal(probabilities >= 0.5, atrium)
