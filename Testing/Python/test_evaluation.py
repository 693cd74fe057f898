import numpy as np
import pytest
import SimpleITK as sitk
from LeftAtriumSegLib.errors import InputImageError, LeftAtriumSegError
from LeftAtriumSegLib.cli import main
from LeftAtriumSegLib.evaluation import ablation_variants, cleanup_ablation, evaluate_case
from LeftAtriumSegLib.postprocessing import CleanupSettings


def _write(array, path, spacing_mm=(1.0, 1.0, 1.0)):
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing_mm)
    sitk.WriteImage(image, str(path))


def test_ablation_scores_only_the_cases_labelled_in_the_given_folder(tmp_path, capsys):
    """A run over two data sets holds maps of both; each set's labels select its own cases."""
    probabilities, labels = tmp_path / "probabilities", tmp_path / "labelsTr"
    probabilities.mkdir(), labels.mkdir()
    reference = np.zeros((20, 20, 20), np.uint8)
    reference[5:15, 5:15, 5:15] = 1
    half = np.zeros((20, 20, 20), np.float32)
    half[5:15, 5:15, 5:10] = 0.9  # half of the reference box: Dice 2/3
    _write(half, probabilities / "set_a_case.nii.gz", spacing_mm=(2.0, 1.0, 1.0))
    _write(np.ones((20, 20, 20), np.float32), probabilities / "set_b_case.nii.gz")  # Dice 0.25 if scored
    _write(reference, labels / "set_a_case.nii.gz", spacing_mm=(2.0, 1.0, 1.0))

    [defaults] = cleanup_ablation(probabilities, labels, ablation_variants()[:1])

    assert capsys.readouterr().err.strip() == (
        f"note: 1 probability map(s) in {probabilities} have no label in {labels}, not scored: set_b_case")
    assert defaults["dice"] == pytest.approx(2 / 3)
    assert defaults["abs_volume_error_ml"] == pytest.approx(10 * 10 * 5 * 2.0 / 1000)


def test_ablation_without_a_single_labelled_map_names_the_folders(tmp_path):
    probabilities, labels = tmp_path / "probabilities", tmp_path / "labelsTr"
    probabilities.mkdir(), labels.mkdir()
    _write(np.zeros((8, 8, 8), np.float32), probabilities / "a.nii.gz")
    _write(np.zeros((8, 8, 8), np.uint8), labels / "b.nii.gz")
    with pytest.raises(ValueError, match="no probability map has a label"):
        cleanup_ablation(probabilities, labels, ablation_variants()[:1])


def test_ablation_refuses_an_image_given_as_a_label(tmp_path):
    probabilities, labels = tmp_path / "probabilities", tmp_path / "imagesTr"
    probabilities.mkdir(), labels.mkdir()
    _write(np.zeros((8, 8, 8), np.float32), probabilities / "a.nii.gz")
    _write(np.arange(512, dtype=np.int16).reshape(8, 8, 8), labels / "a.nii.gz")  # intensities, not a mask
    with pytest.raises(InputImageError, match=r"a\.nii\.gz: is not a mask: it holds 511 different non-zero values"):
        cleanup_ablation(probabilities, labels, ablation_variants()[:1])


def test_a_mask_whose_one_value_is_negative_counts_its_voxels(tmp_path):
    """A {0, -1} mask (int16, as some tools store labels) is a mask: it scored Dice 0 against itself."""
    box = np.zeros((10, 10, 10), np.int16)
    box[2:8, 2:8, 2:6] = 1
    _write(box, tmp_path / "prediction.nii.gz", spacing_mm=(2.0, 1.0, 1.0))
    _write(-box, tmp_path / "label.nii.gz", spacing_mm=(2.0, 1.0, 1.0))
    scores = evaluate_case(tmp_path / "prediction.nii.gz", tmp_path / "label.nii.gz")
    assert scores["dice"] == 1.0 and scores["reference_ml"] == pytest.approx(6 * 6 * 4 * 2.0 / 1000)


@pytest.mark.parametrize("array, message", [
    (np.ones((10, 10), np.uint8), "image is 2D, a 3D volume is needed"),
    (np.ones((2, 10, 10, 10), np.uint8), "image is 4D, a 3D volume is needed"),
])
def test_a_mask_that_is_not_3d_says_so(tmp_path, array, message):
    _write(np.ones((10, 10, 10), np.uint8), tmp_path / "prediction.nii.gz")
    image = sitk.GetImageFromArray(array, isVector=False)
    sitk.WriteImage(image, str(tmp_path / "label.nii.gz"))
    with pytest.raises(InputImageError, match=f"label.nii.gz: {message}"):
        evaluate_case(tmp_path / "prediction.nii.gz", tmp_path / "label.nii.gz")


def _one_case(tmp_path, probability_map: np.ndarray, map_spacing_mm=(1.0, 1.0, 1.0)):
    probabilities, labels = tmp_path / "probabilities", tmp_path / "labelsTr"
    probabilities.mkdir(), labels.mkdir()
    _write(probability_map, probabilities / "a.nii.gz", spacing_mm=map_spacing_mm)
    _write(np.ones((8, 8, 8), np.uint8), labels / "a.nii.gz")
    return probabilities, labels


@pytest.mark.parametrize("spoil, message", [
    (lambda path: path.write_bytes(path.read_bytes()[:-20]), "file is truncated, corrupt or not gzip-compressed"),
    (lambda path: _write(np.full((8, 8, 8), 3.5, np.float32), path), "values 3.5 to 3.5 lie outside 0-1: not a probability map"),
    (lambda path: _write(np.full((8, 8, 8), np.nan, np.float32), path), "NaN or infinite"),
    # segment's masks given for maps: every threshold came out alike, as if it did not matter
    (lambda path: _write(np.ones((8, 8, 8), np.uint8), path), "holds only 0 and 1: a mask, not a probability map"),
])
def test_ablate_names_a_bad_probability_map_in_one_line(tmp_path, capsys, spoil, message):
    probabilities, labels = _one_case(tmp_path, np.full((8, 8, 8), 0.9, np.float32))
    spoil(probabilities / "a.nii.gz")
    assert main(["ablate", "--probabilities", str(probabilities), "--labels", str(labels),
                 "--output", str(tmp_path / "table.csv"), "--quiet"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and error.startswith(f"error: {probabilities / 'a.nii.gz'}: ") and message in error
    assert not (tmp_path / "table.csv").exists()


def test_ablation_refuses_a_map_off_its_label_grid(tmp_path):
    """A map on another grid would be scored against the wrong voxels."""
    probabilities, labels = _one_case(tmp_path, np.full((8, 8, 8), 0.9, np.float32), map_spacing_mm=(2.0, 1.0, 1.0))
    with pytest.raises(LeftAtriumSegError, match=r"a\.nii\.gz: not on the grid of its label .* \(spacing \(2\.0, 1\.0, 1\.0\) "
                                         r"against \(1\.0, 1\.0, 1\.0\)\)"):
        cleanup_ablation(probabilities, labels, ablation_variants()[:1])


def test_a_mean_over_undefined_distances_is_nan_without_a_numpy_warning(recwarn):
    from LeftAtriumSegLib.evaluation import summarise

    # Every mask empty: HD95 is undefined for each case, and for the mean.
    mean = summarise([{"case": "a", "dice": 0.0, "hd95_mm": float("nan")},
                      {"case": "b", "dice": 0.5, "hd95_mm": float("nan")}])
    assert mean["dice"] == 0.25 and np.isnan(mean["hd95_mm"])
    assert summarise([{"case": "a", "hd95_mm": float("nan")}, {"case": "b", "hd95_mm": 3.0}])["hd95_mm"] == 3.0
    assert not recwarn.list


def test_ablation_variants_leave_out_those_that_clean_as_an_earlier_one():
    """From a cleanup without the largest component or hole filling, "no largest component" and
    "no hole filling" were the starting cleanup again, and the gap variants changed nothing."""
    assert [name for name, _ in ablation_variants()] == [
        "defaults", "threshold only", "no largest component", "largest component, no gap", "no hole filling",
        "threshold 0.3", "threshold 0.4", "threshold 0.6", "threshold 0.7", "gap 2.0 mm", "gap 10.0 mm",
        "closing 1.5 mm", "closing 3.0 mm"]
    variants = dict(ablation_variants(CleanupSettings(keep_largest_component=False, fill_holes=False)))
    assert list(variants) == ["given cleanup", "largest component, no gap", "threshold 0.3", "threshold 0.4",
                              "threshold 0.6", "threshold 0.7", "closing 1.5 mm", "closing 3.0 mm"]
    # From another threshold, the package's own is among the variants (it was not: 0.5 was never tried).
    assert [name for name, _ in ablation_variants(CleanupSettings(threshold=0.4))][5:9] == [
        "threshold 0.3", "threshold 0.5", "threshold 0.6", "threshold 0.7"]
    assert variants["largest component, no gap"] == CleanupSettings(keep_largest_component=True, component_gap_mm=0.0,
                                                                     fill_holes=False)


def test_one_folder_given_for_both_predictions_and_labels_is_refused(tmp_path, capsys):
    """A mistyped path scored every mask against itself: Dice 1.000, HD95 0.00, exit 0."""
    folder = tmp_path / "masks"
    folder.mkdir()
    _write(np.ones((8, 8, 8), np.uint8), folder / "a.nii.gz")
    assert main(["evaluate", "--predictions", str(folder), "--labels", str(folder), "--quiet"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: {folder / 'a.nii.gz'}: is both the prediction and the label of case a (one folder given for both?); "
        "it would score perfectly against itself")


def test_the_mean_surface_distance_says_how_many_cases_it_is_over(tmp_path, capsys):
    """An empty prediction has no surface distance: left out of the mean, it made a missed atrium
    improve the mean HD95, unsaid."""
    predictions, labels = tmp_path / "predictions", tmp_path / "labels"
    predictions.mkdir(), labels.mkdir()
    cube = np.zeros((12, 12, 12), np.uint8)
    cube[3:9, 3:9, 3:9] = 1
    for case, predicted in (("found", cube), ("missed", np.zeros_like(cube))):
        _write(cube, labels / f"{case}.nii.gz")
        _write(predicted, predictions / f"{case}.nii.gz")
    assert main(["evaluate", "--predictions", str(predictions), "--labels", str(labels), "--quiet"]) == 0
    assert capsys.readouterr().err.strip() == (
        "note: the mean HD95 and ASSD are over 1 of 2 cases; 1 with an empty prediction or label have none")


@pytest.mark.parametrize("axes", ["RAS", "SLP", "IRA"])
def test_a_label_saved_in_another_axis_order_is_scored_on_the_same_voxels(tmp_path, axes):
    """Tools write masks in other axis orders (nibabel's canonical RAS): the same voxels, not another grid."""
    reference = np.zeros((12, 14, 16), np.uint8)
    reference[2:9, 3:11, 4:13] = 1
    prediction = reference.copy()
    prediction[2:9, 3:11, 4:7] = 0  # a third of the box missed: Dice 0.8
    label = sitk.GetImageFromArray(reference)
    label.SetSpacing((0.8, 1.0, 1.5))
    label.SetOrigin((10.0, -20.0, 5.0))
    sitk.WriteImage(label, str(tmp_path / "label_as_predicted.nii.gz"))
    sitk.WriteImage(sitk.DICOMOrient(label, axes), str(tmp_path / "label.nii.gz"))
    predicted = sitk.GetImageFromArray(prediction)
    predicted.CopyInformation(label)
    sitk.WriteImage(predicted, str(tmp_path / "prediction.nii.gz"))

    scores = evaluate_case(tmp_path / "prediction.nii.gz", tmp_path / "label.nii.gz")

    assert scores["dice"] == pytest.approx(2 * 7 * 8 * 6 / (7 * 8 * 9 + 7 * 8 * 6))
    assert scores["reference_ml"] - scores["predicted_ml"] == pytest.approx(7 * 8 * 3 * 1.2 / 1000)
    assert scores == pytest.approx(evaluate_case(tmp_path / "prediction.nii.gz", tmp_path / "label_as_predicted.nii.gz"))


def test_a_label_on_a_grid_shifted_by_a_voxel_is_still_refused(tmp_path):
    """Only a reordering of the same voxels is taken: a shift would score other voxels."""
    box = np.zeros((10, 10, 10), np.uint8)
    box[2:8, 2:8, 2:8] = 1
    _write(box, tmp_path / "prediction.nii.gz")
    label = sitk.GetImageFromArray(box)
    label.SetOrigin((1.0, 0.0, 0.0))
    sitk.WriteImage(sitk.DICOMOrient(label, "RAS"), str(tmp_path / "label.nii.gz"))
    with pytest.raises(LeftAtriumSegError, match=r"prediction\.nii\.gz: not on the grid of its label .*"
                                               r"\(in the label's axis order: origin \(9\.0, 9\.0, 0\.0\) against \(10\.0, 9\.0, 0\.0\)\)"):
        evaluate_case(tmp_path / "prediction.nii.gz", tmp_path / "label.nii.gz")
