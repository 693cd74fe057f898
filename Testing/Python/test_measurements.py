import math

import numpy as np
import pytest
from conftest import ellipsoid_phantom, make_image, physical_coordinates

from LeftAtriumSegLib.measurements import (
    body_surface_area_m2,
    grade_lavi,
    index_volume,
    measure_volume,
    patient_axis_extents_mm,
)


def test_voxelised_ellipsoid_volume_matches_analytic_volume():
    image, mask, radii = ellipsoid_phantom(size=(96, 80, 60), spacing=(0.5, 0.6, 0.7))
    analytic_ml = 4 / 3 * math.pi * np.prod(radii) / 1000
    measured = measure_volume(mask, image.GetSpacing())
    assert measured.voxel_count == np.count_nonzero(mask)
    assert measured.volume_ml == pytest.approx(analytic_ml, rel=0.01)


def test_volume_counts_voxels_times_anisotropic_voxel_volume():
    mask = np.zeros((10, 10, 10), bool)
    mask[2:5, 1:8, 3:5] = True  # 3 x 7 x 2 voxels
    measured = measure_volume(mask, (0.5, 2.0, 3.0))
    assert measured.voxel_count == 42
    assert measured.volume_mm3 == pytest.approx(42 * 3.0)
    assert measured.volume_ml == pytest.approx(0.126)


def test_extents_of_a_box_on_a_grid_whose_x_runs_superior():
    """Grid x along S, y along P, z along L (LPS columns): a box of 10 x 20 x 30 voxels."""
    mask = np.zeros((40, 30, 20), bool)
    mask[5:35, 5:25, 5:15] = True  # (Z, Y, X): 30, 20 and 10 voxels
    direction = (0, 0, 1, 0, 1, 0, 1, 0, 0)  # rows L, P, S; columns grid x, y, z
    extents = patient_axis_extents_mm(mask, (0.5, 2.0, 1.5), direction)
    assert extents == pytest.approx([30 * 1.5, 20 * 2.0, 10 * 0.5])  # right-left, anterior-posterior, superior-inferior


def test_extents_of_an_obliquely_gridded_ellipsoid_are_its_diameters():
    image, mask, radii_mm = ellipsoid_phantom(size=(72, 64, 48), radii_mm=(20.0, 15.0, 10.0))
    extents = patient_axis_extents_mm(mask, image.GetSpacing(), image.GetDirection())
    voxel_diagonal = np.linalg.norm(image.GetSpacing())
    assert np.all(np.abs(extents - 2 * np.array(radii_mm)) <= voxel_diagonal)


def test_extents_reach_the_outermost_voxel_centres_along_each_patient_axis():
    """On an oblique grid the extremes lie anywhere in the mask, not only at its bounding box's corners."""
    rng = np.random.default_rng(3)
    image = make_image(np.zeros((12, 14, 16), np.float32))
    mask = rng.random((12, 14, 16)) < 0.05
    centres = physical_coordinates(image)[mask] - np.array(image.GetOrigin())
    steps = np.array(image.GetDirection()).reshape(3, 3) * np.array(image.GetSpacing())
    expected = centres.max(0) - centres.min(0) + np.abs(steps).sum(1)
    assert patient_axis_extents_mm(mask, image.GetSpacing(), image.GetDirection()) == pytest.approx(expected)


def test_an_empty_mask_has_no_extent():
    assert patient_axis_extents_mm(np.zeros((4, 5, 6), bool), (1.0, 1.0, 1.0), (1, 0, 0, 0, 1, 0, 0, 0, 1)).tolist() == [0, 0, 0]


def test_mosteller_body_surface_area():
    assert body_surface_area_m2(180, 80) == pytest.approx(2.0)
    assert body_surface_area_m2(160, 60) == pytest.approx(math.sqrt(160 * 60 / 3600))

@pytest.mark.parametrize("height_cm, weight_kg, problem", [
    (1.72, 70, r"height 1.72 cm is outside 40-250 cm \(given in metres or inches\?\)"),
    (0, 70, "height 0 cm is outside"),
    (172, 0, "weight 0 kg is outside"),
    (172, 450, r"weight 450 kg is outside 2-400 kg \(given in pounds\?\)"),
    (float("nan"), 70, "height nan cm is outside"),
])
def test_implausible_height_or_weight_is_refused(height_cm, weight_kg, problem):
    with pytest.raises(ValueError, match=problem):
        body_surface_area_m2(height_cm, weight_kg)


@pytest.mark.parametrize(
    "lavi, grade",
    [(20.0, "normal"), (28.99, "normal"), (29.0, "mildly enlarged"), (33.9, "mildly enlarged"),
     (34.0, "moderately enlarged"), (39.9, "moderately enlarged"), (40.0, "severely enlarged")],
)
def test_lavi_grades_follow_ase_2005_thresholds(lavi, grade):
    assert grade_lavi(lavi) == grade


def test_the_index_is_graded_as_it_is_shown():
    """57.992 mL over 2.0 m2 is 28.996 mL/m2: shown as 29.0, so graded at 29, not under it."""
    index = index_volume(57.992, 180, 80)  # BSA sqrt(180 x 80 / 3600) = 2.0 m2
    assert (index.bsa_m2, index.ml_per_m2, index.grade) == (2.0, 29.0, "mildly enlarged")
