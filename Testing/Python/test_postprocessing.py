import numpy as np
import pytest

from LeftAtriumSegLib.postprocessing import (
    CleanupSettings, clean_mask, close_mask, ellipsoid_footprint, fill_holes, keep_largest_component,
)

SPACING = (1.0, 1.0, 2.0)  # x, y, z in mm: z voxels are twice as long


def _body():
    mask = np.zeros((30, 60, 60), bool)
    mask[10:20, 10:40, 10:40] = True
    return mask


def test_largest_component_drops_distant_blob_and_gap_keeps_near_fragment():
    mask = _body()
    mask[10:14, 50:54, 50:54] = True   # 10 mm from the body: a false positive
    mask[10:12, 10:14, 43:46] = True   # 3 mm from the body: a broken-off fragment
    only_largest = keep_largest_component(mask, SPACING, gap_mm=0)
    assert np.array_equal(only_largest, _body())
    with_gap = keep_largest_component(mask, SPACING, gap_mm=5)
    assert with_gap[10:12, 10:14, 43:46].all()
    assert not with_gap[10:14, 50:54, 50:54].any()


def test_fill_holes_fills_an_enclosed_cavity_only():
    mask = _body()
    mask[13:16, 20:25, 20:25] = False          # enclosed cavity
    mask[10:20, 30:33, 10:13] = False          # notch open to the outside
    filled = fill_holes(mask)
    assert filled[13:16, 20:25, 20:25].all()
    assert not filled[10:20, 30:33, 10:13].any()


def test_footprint_is_a_ball_in_millimetres():
    footprint = ellipsoid_footprint(4.0, SPACING)
    assert footprint.shape == (5, 9, 9)  # 4 mm is 2 voxels along z, 4 along y and x
    assert footprint[2, 4, 4] and footprint[0, 4, 4] and footprint[2, 0, 4]
    assert not footprint[0, 0, 0]


def test_closing_bridges_a_gap_narrower_than_its_radius():
    mask = _body()
    mask[10:20, 24:26, 10:40] = False  # a 2 mm slit across the body
    closed = close_mask(mask, SPACING, radius_mm=2.0)
    assert closed[12:18, 24:26, 12:38].all()
    assert np.array_equal(close_mask(_body(), SPACING, radius_mm=2.0), _body())


def test_clean_mask_thresholds_probabilities():
    probability = np.zeros((30, 60, 60), np.float32)
    probability[_body()] = 0.6
    settings = CleanupSettings(threshold=0.5)
    assert np.array_equal(clean_mask(probability, SPACING, settings), _body())
    assert not clean_mask(probability, SPACING, CleanupSettings(threshold=0.7)).any()


@pytest.mark.parametrize("keep, expected_voxels", [(True, 10 * 30 * 30), (False, 10 * 30 * 30 + 64)])
def test_clean_mask_largest_component_switch(keep, expected_voxels):
    probability = _body().astype(np.float32)
    probability[10:14, 50:54, 50:54] = 1.0
    settings = CleanupSettings(keep_largest_component=keep, component_gap_mm=0)
    assert np.count_nonzero(clean_mask(probability, SPACING, settings)) == expected_voxels


@pytest.mark.parametrize("settings, problem", [
    ({"threshold": 1.5}, "threshold 1.5 must lie between 0 and 1"),
    ({"threshold": 0.0}, "threshold 0 must lie between 0 and 1"),
    ({"component_gap_mm": -1.0}, "cannot be negative"),
    ({"closing_radius_mm": -2.0}, "cannot be negative"),
])
def test_settings_that_cannot_mean_anything_are_refused(settings, problem):
    with pytest.raises(ValueError, match=problem):
        CleanupSettings(**settings)
