"""Images travel into the model frame and back onto the input's exact grid."""

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import OBLIQUE_DIRECTION, SAMPLE_LABEL, ellipsoid_phantom

from LeftAtriumSegLib.datasets import TASK02_HEART_ANATOMY_DIRECTION, acquired_obliquely, task02_header_corrected, task02_to_anatomical
from LeftAtriumSegLib.io import same_grid
from LeftAtriumSegLib.metrics import dice
from LeftAtriumSegLib.preprocessing import (
    ModelFrame, box_with_ring, field_of_view, normalise_intensity, percentiles, to_model_frame, to_reference_grid,
)


def test_model_frame_has_frame_spacing_and_orientation():
    image, _, _ = ellipsoid_phantom()
    framed = to_model_frame(image, ModelFrame("LPS", (1.25, 1.25, 1.25)))
    assert framed.GetSpacing() == pytest.approx((1.25, 1.25, 1.25))
    assert sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(framed.GetDirection()) == "LPS"
    # Same physical centre as the input grid.
    centre = lambda im: im.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in im.GetSize()])
    assert centre(framed) == pytest.approx(centre(image), abs=1e-6)


def test_mask_round_trip_through_model_frame_keeps_shape_and_volume():
    image, mask, _ = ellipsoid_phantom()
    mask_image = sitk.GetImageFromArray(mask.astype(np.float32))
    mask_image.CopyInformation(image)
    back = to_reference_grid(to_model_frame(mask_image, ModelFrame()), image)
    assert back.GetSize() == image.GetSize()
    assert back.GetOrigin() == pytest.approx(image.GetOrigin())
    assert back.GetDirection() == pytest.approx(image.GetDirection())
    assert back.GetSpacing() == pytest.approx(image.GetSpacing())
    recovered = sitk.GetArrayViewFromImage(back) >= 0.5
    assert dice(recovered, mask) > 0.95
    assert np.count_nonzero(recovered) == pytest.approx(np.count_nonzero(mask), rel=0.03)


def test_flipped_axes_land_in_the_same_frame():
    """The same anatomy stored with flipped and permuted axes gives the same framed voxels."""
    image, _, _ = ellipsoid_phantom(direction=(1, 0, 0, 0, 1, 0, 0, 0, 1), spacing=(1.25, 1.25, 1.25))
    flipped = sitk.Flip(sitk.PermuteAxes(image, [1, 0, 2]), [True, False, True])
    a = sitk.GetArrayFromImage(to_model_frame(image, ModelFrame()))
    b = sitk.GetArrayFromImage(to_model_frame(flipped, ModelFrame()))
    assert a.shape == b.shape
    np.testing.assert_allclose(a, b, atol=1e-3)


def test_task02_turn_is_the_header_correction():
    """Turning a framed Task02_Heart-style array gives the voxels of the image with its header
    corrected to the anatomy, and three turns give the array back (a rotation, no mirror)."""
    rng = np.random.default_rng(0)
    image = sitk.GetImageFromArray(rng.random((6, 7, 8)).astype(np.float32))  # distinct sizes catch a wrong axis order
    image.SetSpacing((1.25, 1.25, 1.25))
    framed = sitk.GetArrayFromImage(to_model_frame(image, ModelFrame()))
    framed_corrected = sitk.GetArrayFromImage(to_model_frame(task02_header_corrected(image), ModelFrame()))
    np.testing.assert_allclose(task02_to_anatomical(framed), framed_corrected, atol=1e-6)
    assert np.linalg.det(TASK02_HEART_ANATOMY_DIRECTION) == pytest.approx(1.0)
    np.testing.assert_array_equal(task02_to_anatomical(task02_to_anatomical(task02_to_anatomical(framed))), framed)


def test_shipped_model_finds_the_sample_atrium_with_the_header_corrected_to_its_anatomy(sample_image, segmenter):
    """The sample (Task02_Heart's mislabelled header) shown as a scan with correct geometry shows
    it: model 1.6, which learned bSSFP only in Task02_Heart's frame, scored Dice 0.48 here."""
    image = task02_header_corrected(sample_image)
    label = sitk.GetArrayFromImage(task02_header_corrected(sitk.ReadImage(str(SAMPLE_LABEL)))) > 0
    mask = segmenter.segment(image).mask
    assert dice(mask, label) >= 0.85
    voxel_ml = np.prod(image.GetSpacing()) / 1000
    assert np.count_nonzero(mask) * voxel_ml == pytest.approx(np.count_nonzero(label) * voxel_ml, abs=5.0)


def test_an_oblique_scan_is_turned_onto_the_patient_axes_and_kept_whole():
    image, _, radii = ellipsoid_phantom(size=(80, 72, 48), radii_mm=(20.0, 16.0, 14.0))
    assert image.GetDirection() == pytest.approx(OBLIQUE_DIRECTION)
    framed = to_model_frame(image, ModelFrame())
    np.testing.assert_array_equal(np.array(framed.GetDirection()), np.eye(3).ravel())
    for corner in np.ndindex(2, 2, 2):  # every corner of the scan lies in the frame
        point = image.TransformContinuousIndexToPhysicalPoint([c * (n - 1) for c, n in zip(corner, image.GetSize())])
        index = framed.TransformPhysicalPointToContinuousIndex(point)
        assert all(-0.5 <= i <= n - 0.5 for i, n in zip(index, framed.GetSize()))
    bright_ml = np.count_nonzero(sitk.GetArrayViewFromImage(framed) > 250) * 1.25 ** 3 / 1000
    assert bright_ml == pytest.approx(4 / 3 * np.pi * np.prod(radii) / 1000, rel=0.05)

    inside = field_of_view(image, framed)
    assert 0.3 < inside.mean() < 0.9  # the tilted box's corners are outside
    assert field_of_view(to_model_frame(image, ModelFrame()), framed) is None  # a scan along the axes fills its frame
    normalised = normalise_intensity(sitk.GetArrayViewFromImage(framed), inside)
    np.testing.assert_allclose(normalised[inside], normalise_intensity(sitk.GetArrayViewFromImage(framed)[inside]),
                               atol=1e-5)  # the empty corners do not shift the scan's z-scores


@pytest.mark.parametrize("degrees", [15, 30, 45])
def test_the_sample_acquired_obliquely_is_segmented_as_well_as_along_the_axes(sample_image, segmenter, degrees):
    """Reorienting only permuted and flipped axes, so the networks saw an oblique heart turned:
    30 degrees cost the sample Dice 0.94 -> 0.87, 45 degrees -> 0.55. Resampled onto the patient's
    axes, model 1.8 scores 0.938 as given and 0.940, 0.919, 0.932 tilted; a tilted sample is itself
    resampled, which smooths it (cross-validated, the tilts cost 0.001-0.003 mean Dice)."""
    label = sitk.ReadImage(str(SAMPLE_LABEL))
    along_axes = dice(segmenter.segment(sample_image).mask, sitk.GetArrayFromImage(label) > 0)
    oblique = dice(segmenter.segment(acquired_obliquely(sample_image, degrees)).mask,
                   sitk.GetArrayFromImage(acquired_obliquely(label, degrees)) > 0)
    assert oblique >= along_axes - 0.03


@pytest.mark.parametrize("direction", [OBLIQUE_DIRECTION, tuple(np.eye(3).ravel())])
@pytest.mark.parametrize("box", [(slice(8, 30), slice(12, 40), slice(20, 44)),  # inside the frame
                                 (slice(0, 25), slice(30, 1000), slice(0, 1000))])  # reaching its faces
def test_the_box_alone_resamples_as_the_whole_frame_bit_for_bit(direction, box):
    image, _, _ = ellipsoid_phantom(direction=direction)
    framed = to_model_frame(image, ModelFrame())
    probabilities = np.zeros(sitk.GetArrayViewFromImage(framed).shape, dtype=np.float32)
    probabilities[box] = np.random.default_rng(0).random(probabilities[box].shape, dtype=np.float32)
    whole_frame = sitk.GetImageFromArray(probabilities)
    whole_frame.CopyInformation(framed)
    whole = sitk.GetArrayFromImage(sitk.Resample(whole_frame, image, sitk.Transform(), sitk.sitkLinear, 0.0))
    box = tuple(slice(extent.start, min(extent.stop, n)) for extent, n in zip(box, probabilities.shape))
    near_box = to_reference_grid(box_with_ring(probabilities[box], box, probabilities.shape, framed[:1, :1, :1]), image)
    assert near_box.GetSize() == image.GetSize() and same_grid(near_box, image)
    assert np.count_nonzero(whole) > 1000
    np.testing.assert_array_equal(sitk.GetArrayFromImage(near_box), whole)


@pytest.mark.parametrize("values", [
    np.random.default_rng(0).random((40, 50, 60), dtype=np.float32) * 900,  # a scan's size, in small
    np.r_[np.zeros(300_000), np.random.default_rng(1).random(100_000) * 3].astype(np.float32),  # mostly background
    np.random.default_rng(2).integers(-2000, 2000, 77_777).astype(np.int16),
    np.array([636.96167, 269.78671, 40.973522, 16.527636], dtype=np.float32),  # numpy subtracts in float32
    np.array([5.0]),
])
def test_percentiles_are_numpys_to_the_last_bit(values):
    percents = [0.0, 0.5, 37.3, 99.5, 100.0]
    assert percentiles(values, percents) == np.percentile(values, percents).tolist()


def _z_scores_in_float64(volume, inside=None):
    """The rule normalise_intensity states, written plainly: clip to the 0.5-99.5th percentiles of
    the voxels inside, z-score by their mean and standard deviation, all in float64."""
    voxels = volume.astype(np.float64) if inside is None else volume[inside].astype(np.float64)
    low, high = np.percentile(voxels, [0.5, 99.5])
    clipped = np.clip(volume.astype(np.float64), low, high)
    sample = clipped if inside is None else clipped[inside]
    return ((clipped - sample.mean()) / sample.std()).astype(np.float32)


@pytest.mark.parametrize("layout", ["C", "Fortran", "transposed"])
def test_z_scores_are_the_float64_rule_in_any_memory_layout(layout):
    volume = (np.random.default_rng(4).gamma(2.0, 150.0, (37, 41, 300))).astype(np.float32)
    inside = np.random.default_rng(5).random(volume.shape) < 0.8
    shown = {"C": volume, "Fortran": np.asfortranarray(volume), "transposed": volume.transpose(2, 1, 0)}[layout]
    shown_inside = inside.transpose(2, 1, 0) if layout == "transposed" else inside
    for region in (None, shown_inside):
        normalised = normalise_intensity(shown, region)
        assert normalised.dtype == np.float32 and normalised.shape == shown.shape
        np.testing.assert_allclose(normalised, _z_scores_in_float64(shown, region), rtol=1e-6, atol=1e-6)
    assert not np.shares_memory(normalise_intensity(shown), shown)
