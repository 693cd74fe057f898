import numpy as np
import pytest

from LeftAtriumSegLib.metrics import dice, segmentation_metrics, surface_distances_mm


def _ball(shape, centre, radius_vox):
    z, y, x = np.ogrid[tuple(slice(0, n) for n in shape)]
    return (z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2 <= radius_vox**2


def test_dice_of_half_overlapping_boxes():
    a = np.zeros((10, 10, 10), bool)
    b = np.zeros_like(a)
    a[:, :, 0:4] = True
    b[:, :, 2:6] = True
    assert dice(a, b) == pytest.approx(0.5)
    assert dice(a, a) == 1.0
    assert dice(np.zeros_like(a), np.zeros_like(a)) == 1.0


def test_surface_distances_of_concentric_balls_equal_radius_difference():
    spacing = (1.0, 1.0, 1.0)
    inner = _ball((60, 60, 60), (30, 30, 30), 15)
    outer = _ball((60, 60, 60), (30, 30, 30), 19)
    metrics = segmentation_metrics(inner, outer, spacing)
    assert metrics["hd95_mm"] == pytest.approx(4.0, abs=0.6)
    assert metrics["assd_mm"] == pytest.approx(4.0, abs=0.6)


def test_surface_distance_respects_anisotropic_spacing():
    a = np.zeros((20, 20, 20), bool)
    b = np.zeros_like(a)
    a[5:15, 5:15, 5:10] = True
    b[5:15, 5:15, 5:12] = True  # grows by two voxels along x only
    metrics = segmentation_metrics(a, b, spacing_mm=(3.0, 1.0, 1.0))
    assert metrics["hd95_mm"] == pytest.approx(6.0)
    assert metrics["abs_volume_error_ml"] == pytest.approx(10 * 10 * 2 * 3.0 / 1000)


def test_empty_prediction_has_zero_dice_and_nan_distances():
    reference = _ball((20, 20, 20), (10, 10, 10), 5)
    metrics = segmentation_metrics(np.zeros_like(reference), reference, (1.0, 1.0, 1.0))
    assert metrics["dice"] == 0.0
    assert np.isnan(metrics["hd95_mm"])


def test_a_mask_filling_the_array_has_its_surface_at_the_array_edge():
    whole = np.ones((5, 5, 5), bool)
    inner = np.zeros_like(whole)
    inner[1:-1, 1:-1, 1:-1] = True
    distances = surface_distances_mm(whole, inner, (1.0, 1.0, 1.0))
    assert len(distances) == (125 - 27) + (27 - 1)  # the outer shell, then the inner cube's shell
    assert distances.max() == pytest.approx(np.sqrt(3))  # a corner to the inner cube's corner
    assert distances.min() == pytest.approx(1.0)


def test_bland_altman_agreement_of_known_differences():
    from LeftAtriumSegLib.metrics import bland_altman

    reference = [50.0, 100.0, 80.0, 40.0]
    predicted = [52.0, 96.0, 84.0, 40.0]  # differences +2, -4, +4, 0 mL; +4%, -4%, +5%, 0%
    agreement = bland_altman(predicted, reference)
    assert agreement["bias_ml"] == pytest.approx(0.5)
    spread = 1.96 * np.std([2.0, -4.0, 4.0, 0.0], ddof=1)
    assert (agreement["lower_ml"], agreement["upper_ml"]) == pytest.approx((0.5 - spread, 0.5 + spread))
    assert agreement["bias_pct"] == pytest.approx(1.25) and agreement["mae_pct"] == pytest.approx(3.25)
    assert agreement["mae_ml"] == pytest.approx(2.5)
    with pytest.raises(ValueError, match="two or more cases"):
        bland_altman([1.0], [1.0])
    # An empty reference counts in mL and has no share to count in %.
    agreement = bland_altman([*predicted, 3.0], [*reference, 0.0])
    assert agreement["bias_ml"] == pytest.approx((2 - 4 + 4 + 0 + 3) / 5) and agreement["bias_pct"] == pytest.approx(1.25)
    assert np.isnan(bland_altman([52.0, 3.0], [50.0, 0.0])["bias_pct"])
