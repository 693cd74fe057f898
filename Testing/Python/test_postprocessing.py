import numpy as np
import pytest

from LeftAtriumSegLib.postprocessing import (
    CleanupSettings, bounding_box, clean_mask, close_mask, distance_mm, fill_holes, keep_largest_component,
)

SPACING = (1.0, 1.0, 2.0)  # x, y, z in mm: z voxels are twice as long


def _body():
    mask = np.zeros((30, 60, 60), bool)
    mask[10:20, 10:40, 10:40] = True
    return mask


@pytest.mark.parametrize("voxels", [0, 1, 7, 300])
def test_bounding_box_is_the_first_and_last_index_of_the_masks_voxels(voxels):
    mask = np.zeros((30, 40, 50), bool)
    rng = np.random.default_rng(voxels)
    mask[tuple(rng.integers(0, n, voxels) for n in mask.shape)] = True
    expected = [(int(i.min()), int(i.max())) for i in np.nonzero(mask)] if voxels else None
    assert bounding_box(mask) == expected


def test_largest_component_drops_distant_blob_and_gap_keeps_near_fragment():
    mask = _body()
    mask[10:14, 50:54, 50:54] = True   # 10 mm from the body: a false positive
    mask[10:12, 10:14, 43:46] = True   # 3 mm from the body: a broken-off fragment
    only_largest = keep_largest_component(mask, SPACING, gap_mm=0)
    assert np.array_equal(only_largest, _body())
    with_gap = keep_largest_component(mask, SPACING, gap_mm=5)
    assert with_gap[10:12, 10:14, 43:46].all()
    assert not with_gap[10:14, 50:54, 50:54].any()


@pytest.mark.parametrize("gap_mm, kept", [(8.0, True), (7.9, False)])
def test_component_gap_is_measured_in_millimetres_between_voxel_centres(gap_mm, kept):
    mask = _body()  # slices 10-19
    mask[23:25, 20:24, 20:24] = True  # from slice 19 to 23: 4 slices of 2 mm
    assert keep_largest_component(mask, SPACING, gap_mm)[23:25].any() == kept


def test_a_blob_touching_the_body_only_at_a_corner_is_part_of_it():
    mask = _body()
    mask[20:22, 40:42, 40:42] = True  # shares one corner with voxel (19, 39, 39)
    assert np.array_equal(keep_largest_component(mask, SPACING, gap_mm=0), mask)


def test_distance_is_zero_inside_and_in_millimetres_outside():
    mask = _body()
    distance = distance_mm(mask, SPACING)
    assert (distance[mask] <= 0).all()
    assert distance[22, 15, 15] == pytest.approx(6.0)  # 3 slices of 2 mm beyond slice 19
    assert distance[15, 15, 43] == pytest.approx(4.0)  # 4 columns of 1 mm beyond column 39
    assert distance[20, 41, 15] == pytest.approx(np.hypot(2.0, 2.0))


def test_fill_holes_fills_an_enclosed_cavity_only():
    mask = _body()
    mask[13:16, 20:25, 20:25] = False          # enclosed cavity
    mask[10:20, 30:33, 10:13] = False          # notch open to the outside
    filled = fill_holes(mask)
    assert filled[13:16, 20:25, 20:25].all()
    assert not filled[10:20, 30:33, 10:13].any()


def test_a_cavity_open_only_through_an_edge_diagonal_step_counts_as_enclosed():
    # The mask is 26-connected, so its background is 6-connected: a diagonal step through the
    # wall does not connect the cavity to the outside.
    mask = _body()
    mask[13:16, 20:25, 20:25] = False  # cavity
    mask[14, 22, 10:19] = False        # tunnel from the outside (column 9) to column 18 ...
    mask[14, 23, 19] = False           # ... then one step diagonal in y and x into the cavity
    filled = fill_holes(mask)
    assert filled[13:16, 20:25, 20:25].all() and filled[14, 23, 19]
    assert not filled[14, 22, 10:19].any()  # the tunnel is open to the outside


def test_closing_bridges_a_gap_narrower_than_its_radius():
    mask = _body()
    mask[10:20, 24:26, 10:40] = False  # a 2 mm slit across the body
    closed = close_mask(mask, SPACING, radius_mm=2.0)
    assert closed[12:18, 24:26, 12:38].all()
    assert np.array_equal(close_mask(_body(), SPACING, radius_mm=2.0), _body())


@pytest.mark.parametrize("radius_mm, closes", [(1.9, False), (2.0, True)])
def test_closing_radius_is_in_millimetres(radius_mm, closes):
    mask = _body()
    mask[15, 10:40, 10:40] = False  # one slice of 2 mm across the body
    assert close_mask(mask, SPACING, radius_mm)[15, 12:38, 12:38].all() == closes
    assert not close_mask(mask, SPACING, radius_mm)[15, :, :10].any()  # nothing grows outside


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
    ({"component_gap_mm": -1.0}, "component gap -1 mm must lie between 0 and 100 mm"),
    ({"closing_radius_mm": -2.0}, "closing radius -2 mm must lie between 0 and 100 mm"),
    ({"closing_radius_mm": float("inf")}, "closing radius inf mm must lie between 0 and 100 mm"),
    ({"component_gap_mm": float("nan")}, "component gap nan mm must lie between 0 and 100 mm"),
])
def test_settings_that_cannot_mean_anything_are_refused(settings, problem):
    with pytest.raises(ValueError, match=problem):
        CleanupSettings(**settings)
