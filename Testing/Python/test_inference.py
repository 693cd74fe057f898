"""Multi-view inference puts every view's slices back where they came from."""

import warnings

import numpy as np
import pytest
from LeftAtriumSegLib.inference import predict_frame, predict_slices, slice_stacks
from LeftAtriumSegLib.preprocessing import VIEW_AXES, from_view, to_view


class CentreSliceLogits:
    """Stand-in network whose logits are 4x its input stack's centre slice (plus ``offset``):
    the probability map it yields is known voxel by voxel, so any misplaced slice shows."""

    size_multiple = 4

    def __init__(self, slices: int, offset: float = 0.0):
        self.centre = slices // 2
        self.offset = offset

    def __call__(self, stacks: np.ndarray) -> np.ndarray:
        assert stacks.dtype == np.float32 and stacks.shape[2] % 4 == 0 and stacks.shape[3] % 4 == 0
        return 4 * stacks[:, self.centre : self.centre + 1] + self.offset


def test_slice_stacks_repeat_the_end_slices():
    volume = np.arange(4, dtype=np.float32)[:, None, None] * np.ones((4, 2, 3), dtype=np.float32)
    stacks = slice_stacks(volume, 5, [0, 2, 3])
    assert stacks.shape == (3, 5, 2, 3)
    np.testing.assert_array_equal(stacks[:, :, 0, 0], [[0, 0, 0, 1, 2], [0, 1, 2, 3, 3], [1, 2, 3, 3, 3]])


def test_probabilities_are_the_logistic_of_the_logits_without_overflow():
    logits = np.array([-1e4, -20.0, -3.0, 0.0, 3.0, 1e4], dtype=np.float32)

    class FixedLogits:
        size_multiple = 1

        def __call__(self, stacks: np.ndarray) -> np.ndarray:
            return np.broadcast_to(logits, (len(stacks), 1, 1, len(logits)))

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an overflow in exp would warn
        probabilities = predict_slices(FixedLogits(), np.zeros((2, 1, 6), np.float32), slices=1, z_indices=[0, 1])
    expected = 1 / (1 + np.exp(-logits.astype(np.float64).clip(-700, 700)))
    np.testing.assert_allclose(probabilities, np.broadcast_to(expected, (2, 1, 6)), rtol=1e-6, atol=1e-7)
    assert probabilities[0, 0, 3] == 0.5  # the threshold sits exactly at logit 0


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
    probabilities = predict_frame(networks, normalised, slices=5).probabilities
    assert probabilities.shape == atrium.shape
    np.testing.assert_array_equal(probabilities >= 0.5, atrium)
    expected_inside = 1 / (1 + np.exp(-8.0))
    np.testing.assert_allclose(probabilities[atrium], expected_inside, rtol=1e-5)


def test_views_are_averaged():
    atrium = _off_centre_ellipsoid()
    normalised = np.where(atrium, 2.0, -2.0).astype(np.float32)
    silent = CentreSliceLogits(slices=5, offset=-1e4)  # a view that sees nothing anywhere
    probabilities = predict_frame({"axial": CentreSliceLogits(5), "sagittal": silent}, normalised, slices=5).probabilities
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
    probabilities = predict_frame({"axial": CentreSliceLogits(5)}, normalised, slices=5).probabilities
    np.testing.assert_array_equal(probabilities >= 0.5, atrium | fragment)
    assert not probabilities[:, :, 70:].any()


def test_a_volume_thinner_than_the_localiser_stride_still_gets_a_coarse_pass():
    """A 2-slice volume once gave the coarse pass no slice, and the component search crashed the process."""
    volume = np.where(_off_centre_ellipsoid((30, 36, 40))[10:12], 2.0, -2.0).astype(np.float32)
    assert (volume > 0).sum() > 100
    networks = {view: CentreSliceLogits(5) for view in VIEW_AXES}
    probabilities = predict_frame(networks, volume, 5).probabilities
    assert probabilities.shape == volume.shape
    assert (probabilities[volume > 0] > 0.99).all() and (probabilities[volume < 0] < 0.01).all()


class CoarseBlindTo:
    """A localiser that misses the atrium beyond ``last_row`` in its coarse pass (the box then cuts
    the atrium off) and sees it all in the full pass, as a network does that finds only part of
    an atrium on widely spaced slices."""

    size_multiple = 4

    def __init__(self, last_row: int):
        self.full = CentreSliceLogits(5)
        self.last_row = last_row
        self.calls = 0

    def __call__(self, stacks: np.ndarray) -> np.ndarray:
        self.calls += 1
        logits = self.full(stacks)
        if self.calls == 1:  # the coarse pass's single batch
            logits[:, :, self.last_row:] = -8.0
        return logits


def test_a_box_that_cut_the_atrium_off_grows_and_predicts_it_whole():
    shape = (30, 60, 40)
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    atrium = ((z - 15) / 8) ** 2 + ((y - 30) / 22) ** 2 + ((x - 20) / 8) ** 2 <= 1  # rows 8-52
    normalised = np.where(atrium, 2.0, -2.0).astype(np.float32)
    frame = predict_frame({"axial": CoarseBlindTo(last_row=25)}, normalised, slices=5, margin_voxels=12)
    np.testing.assert_array_equal(frame.probabilities >= 0.5, atrium)
    assert frame.box_contact == 0 and frame.box[1].stop > 52

    # Where growing twice is not enough, the contact stays, for the quality flag to report.
    frame = predict_frame({"axial": CoarseBlindTo(last_row=20)}, normalised, slices=5, margin_voxels=3)
    assert frame.box_contact > 0 and (frame.probabilities >= 0.5).sum() < atrium.sum()


def test_views_that_disagree_lower_the_agreement():
    atrium = _off_centre_ellipsoid()
    normalised = np.where(atrium, 2.0, -2.0).astype(np.float32)
    agreeing = predict_frame({view: CentreSliceLogits(5) for view in VIEW_AXES}, normalised, slices=5)
    assert agreeing.view_agreement == 1.0
    half_blind = CentreSliceLogits(5, offset=-9.0)  # a view that misses the atrium
    disagreeing = predict_frame({"axial": CentreSliceLogits(5), "coronal": CentreSliceLogits(5), "sagittal": half_blind},
                                normalised, slices=5)
    assert disagreeing.view_agreement < 0.5


def test_voxels_the_networks_half_see_are_counted_per_voxel_segmented():
    atrium = _off_centre_ellipsoid()
    half_seen = np.zeros_like(atrium)
    half_seen[16:22, 14:26, 8:20] = ~atrium[16:22, 14:26, 8:20]  # beside the atrium, probability ~0.35
    assert half_seen.sum() > 100
    normalised = np.where(atrium, 2.0, np.where(half_seen, 0.3, -2.0)).astype(np.float32)
    frame = predict_frame({view: CentreSliceLogits(5, offset=-1.8) for view in VIEW_AXES}, normalised, slices=5)
    assert (frame.probabilities >= 0.5).sum() == atrium.sum()
    assert frame.uncertain_share == pytest.approx(half_seen.sum() / atrium.sum())


def test_mask_voxels_the_networks_half_believe_are_counted_as_a_share_of_the_mask():
    atrium = _off_centre_ellipsoid()
    faint = atrium.copy()
    faint[:11] = False  # part of the atrium at probability ~0.65, the rest ~1
    assert 100 < faint.sum() < atrium.sum()
    normalised = np.where(faint, 0.6, np.where(atrium, 2.0, -2.0)).astype(np.float32)
    frame = predict_frame({view: CentreSliceLogits(5, offset=-1.8) for view in VIEW_AXES}, normalised, slices=5)
    assert (frame.probabilities >= 0.5).sum() == atrium.sum()
    assert frame.faint_share == pytest.approx(faint.sum() / atrium.sum())
    clear = predict_frame({view: CentreSliceLogits(5, offset=-1.8) for view in VIEW_AXES},
                          np.where(atrium, 2.0, -2.0).astype(np.float32), slices=5)
    assert clear.faint_share == 0.0
