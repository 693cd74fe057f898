"""The command line end to end: the bundled model on the sample, and hostile input."""

import csv
import hashlib
import math
import re
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
import slicerio
from conftest import SAMPLE_IMAGE, SAMPLE_LABEL

from LeftAtriumSegLib import __version__
from LeftAtriumSegLib.cli import _cleanup_from, build_parser, main
from LeftAtriumSegLib.measurements import grade_lavi
from LeftAtriumSegLib.metrics import dice
from LeftAtriumSegLib.model_file import read_model_config
from LeftAtriumSegLib.models import model_path
from LeftAtriumSegLib.postprocessing import CleanupSettings


def _read_volumes(folder):
    with open(folder / "volumes.csv") as handle:
        return {row["case"]: row for row in csv.DictReader(handle)}


@pytest.fixture(scope="module")
def sample_run(tmp_path_factory):
    """One ``segment`` run over the sample: NIfTI output, reused by several tests."""
    output = tmp_path_factory.mktemp("sample")
    assert main(["segment", str(SAMPLE_IMAGE), "--output-dir", str(output), "--format", "nii.gz", "--quiet"]) == 0
    return output


def test_sample_is_segmented_on_its_grid_with_dice_and_volume(sample_run, sample_label):
    image = sitk.ReadImage(str(SAMPLE_IMAGE))
    prediction = sitk.ReadImage(str(sample_run / "la_022_crop.nii.gz"))
    assert prediction.GetSize() == image.GetSize()
    assert prediction.GetSpacing() == pytest.approx(image.GetSpacing())
    assert prediction.GetOrigin() == pytest.approx(image.GetOrigin())
    assert prediction.GetDirection() == pytest.approx(image.GetDirection())
    assert prediction.GetPixelID() == sitk.sitkUInt8
    predicted = sitk.GetArrayFromImage(prediction)
    assert set(np.unique(predicted)) <= {0, 1}
    assert dice(predicted > 0, sample_label) >= 0.85

    row = _read_volumes(sample_run)["la_022_crop"]
    reference_ml = np.count_nonzero(sample_label) * np.prod(image.GetSpacing()) / 1000
    assert row["status"] == "ok"
    assert float(row["volume_ml"]) == pytest.approx(reference_ml, abs=5.0)
    assert int(row["voxel_count"]) == np.count_nonzero(predicted)
    assert float(row["volume_mm3"]) == pytest.approx(np.count_nonzero(predicted) * np.prod(image.GetSpacing()), rel=1e-4)
    assert row["spacing_mm"] == "1.25 1.25 1.37"  # the header's, which the volume was counted in


def test_evaluate_reports_dice_of_the_sample(sample_run, tmp_path, capsys):
    labels = tmp_path / "labels"
    labels.mkdir()
    (labels / "la_022_crop.nii.gz").write_bytes(SAMPLE_LABEL.read_bytes())
    output = tmp_path / "evaluation.csv"
    assert main(["evaluate", "--predictions", str(sample_run), "--labels", str(labels), "--output", str(output)]) == 0
    rows = list(csv.DictReader(open(output)))
    assert [row["case"] for row in rows] == ["la_022_crop", "mean"]
    assert float(rows[0]["dice"]) >= 0.85
    assert float(rows[0]["hd95_mm"]) < 10
    assert "la_022_crop" in capsys.readouterr().out

    output.write_text("the user's table")
    assert main(["evaluate", "--predictions", str(sample_run), "--labels", str(labels), "--output", str(output)]) == 2
    assert capsys.readouterr().err.strip() == f"error: {output}: output exists (use --overwrite to replace it)"
    assert output.read_text() == "the user's table"
    assert main(["evaluate", "--predictions", str(sample_run), "--labels", str(labels), "--output", str(output),
                 "--overwrite"]) == 0
    assert output.read_text().splitlines()[1].startswith("la_022_crop,")


def test_clinical_table_adds_the_volume_index_to_the_volumes_table(sample_run, tmp_path, capsys):
    clinical = tmp_path / "clinical.csv"
    clinical.write_text("case,height_cm,weight_kg\nla_022_crop,172,70\nanother_case,,\n")
    output = tmp_path / "out"
    output.mkdir()
    # The sample's mask from the shared run, with the table that records what made it: re-measured,
    # not segmented again.
    for name in ("la_022_crop.nii.gz", "volumes.csv"):
        (output / name).write_bytes((sample_run / name).read_bytes())
    assert main(["segment", str(SAMPLE_IMAGE), "--output-dir", str(output), "--format", "nii.gz",
                 "--clinical", str(clinical)]) == 0
    row = _read_volumes(output)["la_022_crop"]
    bsa_m2 = math.sqrt(172 * 70 / 3600)
    assert float(row["bsa_m2"]) == pytest.approx(bsa_m2, abs=5e-4)
    assert float(row["lavi_ml_per_m2"]) == pytest.approx(float(row["volume_ml"]) / bsa_m2, abs=0.05)
    assert row["lavi_grade"] == grade_lavi(float(row["lavi_ml_per_m2"]))  # the grade of the number shown
    assert f"{float(row['volume_ml']):.1f} mL, {float(row['lavi_ml_per_m2']):.1f} mL/m2, {row['lavi_grade']} (mask kept, measured again" in capsys.readouterr().out


def test_evaluate_goes_on_past_bad_predictions_with_one_line_each(sample_run, tmp_path, capsys):
    predictions, labels = tmp_path / "predictions", tmp_path / "labels"
    predictions.mkdir()
    labels.mkdir()
    for case in ("good", "off_grid", "corrupt", "image_as_label", "several_labels"):
        (labels / f"{case}.nii.gz").write_bytes(SAMPLE_LABEL.read_bytes())
    for case in ("good", "image_as_label", "several_labels"):
        (predictions / f"{case}.nii.gz").write_bytes((sample_run / "la_022_crop.nii.gz").read_bytes())
    sitk.WriteImage(sitk.ReadImage(str(SAMPLE_LABEL))[:, :, :-4], str(predictions / "off_grid.nii.gz"))
    (predictions / "corrupt.nii.gz").write_text("not an image")
    (labels / "image_as_label.nii.gz").write_bytes(SAMPLE_IMAGE.read_bytes())  # the MRI given as its label
    two_labels = sitk.ReadImage(str(SAMPLE_LABEL))
    two_labels[0, 0, 0] = 2
    sitk.WriteImage(two_labels, str(labels / "several_labels.nii.gz"))

    assert main(["evaluate", "--predictions", str(predictions), "--labels", str(labels), "--quiet"]) == 1
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 4
    assert errors[0].startswith(f"error: {predictions / 'corrupt.nii.gz'}: file is truncated, corrupt")
    assert errors[1].startswith(f"error: {labels / 'image_as_label.nii.gz'}: is not a mask: it holds ")
    assert errors[2] == (f"error: {predictions / 'off_grid.nii.gz'}: not on the grid of its label "
                         f"{labels / 'off_grid.nii.gz'} (size (224, 224, 70) against (224, 224, 74))")
    assert errors[3] == (f"error: {labels / 'several_labels.nii.gz'}: is not a mask: it holds 2 different non-zero "
                         "values (an image, or a map of several labels?); a mask of the left atrium alone is needed")
    rows = list(csv.DictReader(open(predictions / "evaluation.csv")))
    assert [row["case"] for row in rows] == ["good", "mean"]
    assert float(rows[1]["dice"]) == float(rows[0]["dice"]) >= 0.85


def test_default_output_is_a_slicer_segmentation(tmp_path, sample_label):
    assert main(["segment", str(SAMPLE_IMAGE), "--output-dir", str(tmp_path), "--quiet"]) == 0
    segmentation = slicerio.read_segmentation(str(tmp_path / "la_022_crop.seg.nrrd"))
    segment = slicerio.segment_from_name(segmentation, "Left atrium")
    assert segment["terminology"]["type"][1] == "82471001"
    mask = slicerio.segment_mask(segmentation, segment).transpose(2, 1, 0)  # (i, j, k) -> (z, y, x)
    assert dice(mask, sample_label) >= 0.85
    assert segment["extent"] == [int(v) for i in np.nonzero(mask)[::-1] for v in (i.min(), i.max())]


def _write(image, path):
    sitk.WriteImage(image, str(path))
    return path


@pytest.fixture()
def hostile_inputs(tmp_path):
    """Bad files beside one good one; returns ``{case: expected message fragment}``."""
    folder = tmp_path / "inputs"
    folder.mkdir()
    sample = sitk.ReadImage(str(SAMPLE_IMAGE))
    (folder / "good.nii.gz").write_bytes(SAMPLE_IMAGE.read_bytes())
    (folder / "corrupt.nii.gz").write_bytes(b"this is not an image" * 10)
    (folder / "truncated.nii.gz").write_bytes(SAMPLE_IMAGE.read_bytes()[:5000])
    _write(sample[:, :, 40], folder / "slice2d.nii.gz")
    _write(sitk.JoinSeries([sample, sample]), folder / "series4d.nii.gz")
    constant = sitk.Image(sample.GetSize(), sitk.sitkInt16)
    constant.CopyInformation(sample)
    _write(constant + 7, folder / "constant.nii.gz")
    voxels = sitk.GetArrayFromImage(sitk.Cast(sample, sitk.sitkFloat32))
    voxels[10, 10, 10] = np.nan
    with_nan = sitk.GetImageFromArray(voxels)
    with_nan.CopyInformation(sample)
    _write(with_nan, folder / "with_nan.mha")
    _write(with_nan, folder / "with_nan_nifti.nii.gz")  # ITK's NIfTI reader turns NaN into 0
    voxels[10, 10, 10] = np.inf
    with_infinity = sitk.GetImageFromArray(voxels)
    with_infinity.CopyInformation(sample)
    _write(with_infinity, folder / "with_infinity.nii")
    absurd = sitk.Image(sample)
    absurd.SetSpacing((1e6, 1.0, 1.0))
    _write(absurd, folder / "absurd_spacing.nii.gz")
    _write(absurd, folder / "absurd_spacing_nrrd.nrrd")
    (folder / "empty.nii").write_bytes(b"")
    label = sitk.ReadImage(str(SAMPLE_LABEL))
    _write(label, folder / "label_as_image.nii.gz")
    (folder / "huge_header.mha").write_bytes(
        b"ObjectType = Image\nNDims = 3\nDimSize = 100000 100000 100000\nElementSpacing = 1 1 1\n"
        b"ElementType = MET_FLOAT\nElementDataFile = LOCAL\n" + bytes(64))
    expected = {
        "empty": "cannot read image",
        "label_as_image": "label map",
        "huge_header": "larger than",
        "corrupt": "corrupt",
        "truncated": "truncated",
        "slice2d": "2D",
        "series4d": "4D",
        "constant": "constant intensity",
        "with_nan": "NaN",
        "with_nan_nifti": "NaN",
        "with_infinity": "infinite",
        "absurd_spacing": "the header's voxel size (pixdim) is (1000000.0, 1.0, 1.0) mm",
        "absurd_spacing_nrrd": "voxel spacing (1000000.0, 1.0, 1.0) mm is outside 0.05-20.0 mm",
    }
    return folder, expected


def test_bad_inputs_fail_one_line_each_and_the_good_case_goes_on(hostile_inputs, tmp_path):
    folder, expected = hostile_inputs
    missing = tmp_path / "missing.nii.gz"
    output = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "LeftAtriumSegLib.cli", "segment", str(folder), str(missing),
         "--output-dir", str(output), "--format", "nii.gz", "--quiet"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode != 0
    error_lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.stderr
    assert len(error_lines) == len(expected) + 1, result.stderr
    for case, fragment in {**expected, "missing": "file not found"}.items():
        line = next(line for line in error_lines if f"/{case}." in line)
        assert fragment in line, line
    rows = _read_volumes(output)
    assert rows["good"]["status"] == "ok" and float(rows["good"]["volume_ml"]) > 10
    assert all(rows[case]["status"] == "failed" and rows[case]["error"] for case in expected)
    # Only the good case's output and the table exist: nothing half-written.
    assert sorted(p.name for p in output.iterdir()) == ["good.nii.gz", "volumes.csv"]


def test_a_volume_without_an_atrium_is_flagged_not_failed(tmp_path, capsys):
    # Smoothed noise: no heart, so the model finds nothing.
    noise = np.random.default_rng(0).normal(100, 20, (64, 128, 128)).astype(np.float32)
    image = sitk.SmoothingRecursiveGaussian(sitk.GetImageFromArray(noise), 4.0)
    image.SetSpacing((1.25, 1.25, 1.25))
    sitk.WriteImage(image, str(tmp_path / "no_heart.nii.gz"))
    assert main(["segment", str(tmp_path / "no_heart.nii.gz"), "--output-dir", str(tmp_path / "out"),
                 "--format", "nii.gz"]) == 0
    row = _read_volumes(tmp_path / "out")["no_heart"]
    assert float(row["volume_ml"]) < 5.0
    assert (row["status"], row["qc"]) == ("ok", "review")
    assert row["qc_reasons"].startswith("under 5 mL: atrium probably missed")
    warning = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1 and "no_heart.nii.gz: review this result (under 5 mL: atrium probably missed" in warning[0]


def test_each_case_line_says_its_flag_and_whether_its_mask_was_kept(tmp_path, capsys):
    output = tmp_path / "out"
    for kept in ("", "mask kept, measured again; "):
        assert main(["segment", str(SAMPLE_IMAGE), "--output-dir", str(output)]) == 0
        line = capsys.readouterr().out.splitlines()[0]
        assert re.fullmatch(rf"la_022_crop: left atrium \d+\.\d mL \({kept}quality check: ok\) -> "
                            rf"{re.escape(str(output / 'la_022_crop.seg.nrrd'))}", line), line


def test_the_case_line_rounds_the_volume_once(tmp_path):
    """135,745.6 mm3 is 135.7 mL; the table's 135.75 rounded again read 135.8."""
    from LeftAtriumSegLib.batch import _case_line

    row = {"case": "s", "volume_mm3": "135745.6", "volume_ml": "135.75", "status": "ok", "qc": "ok"}
    assert _case_line(row, tmp_path / "s.seg.nrrd").startswith("s: left atrium 135.7 mL (quality check: ok)")


def test_the_run_counts_its_flagged_cases_and_names_those_left_without_height_and_weight(tmp_path, capsys):
    """A name typo or R's NA left a case without its index, unsaid, where other rows matched; one
    scan under two names passed as two subjects."""
    noise = np.random.default_rng(0).normal(100, 20, (64, 128, 128)).astype(np.float32)
    image = sitk.SmoothingRecursiveGaussian(sitk.GetImageFromArray(noise), 4.0)
    image.SetSpacing((1.25, 1.25, 1.25))
    scans = tmp_path / "scans"
    scans.mkdir()
    sitk.WriteImage(image, str(scans / "no_heart.nii.gz"))
    (scans / "la_003.nii.gz").write_bytes(SAMPLE_IMAGE.read_bytes())
    (scans / "la_004.nii.gz").write_bytes(SAMPLE_IMAGE.read_bytes())  # one scan under two names
    clinical = tmp_path / "clinical.csv"
    clinical.write_text("case,height_cm,weight_kg\nla_03,170,70\nla_004,180,80\nno_heart,NA,80\n")
    output = tmp_path / "out"
    assert main(["segment", str(scans), "--clinical", str(clinical), "--output-dir", str(output)]) == 0
    captured = capsys.readouterr()
    assert captured.err.splitlines()[0] == (f"warning: {clinical}: 2 of 3 cases lack a height or a weight in it "
                                            "(la_003, no_heart): no LA volume index for them")
    assert captured.err.splitlines()[-1] == (f"warning: {output / 'volumes.csv'}: 1 scan(s) recorded under more than "
                                             "one case name, by their SHA-256 (la_003 = la_004): one subject counted "
                                             "twice?")
    assert captured.out.splitlines()[-1] == (f"3 of 3 cases done, 1 flagged for review (1 under 5 mL: atrium probably "
                                             f"missed, 1 the three views' networks disagree); volumes in "
                                             f"{output / 'volumes.csv'}")
    rows = _read_volumes(output)
    assert rows["la_004"]["lavi_ml_per_m2"] and not rows["no_heart"]["lavi_ml_per_m2"]

    clinical.write_text("case,height_cm,weight_kg\nla_003,NA,70\nla_004,#N/A,80\nno_heart,170,NULL\n")  # none measured
    assert main(["segment", str(scans), "--clinical", str(clinical), "--output-dir", str(output), "--quiet"]) == 0
    assert capsys.readouterr().err.splitlines()[0] == (
        f"warning: {clinical}: 3 of 3 cases lack a height or a weight in it (la_003, la_004, no_heart): no LA volume "
        "index for them")


def test_cleanup_settings_out_of_range_are_refused_before_any_work(tmp_path, capsys):
    assert main(["segment", str(SAMPLE_IMAGE), "--output-dir", str(tmp_path / "out"), "--threshold", "50"]) == 2
    assert capsys.readouterr().err.strip() == "error: threshold 50 must lie between 0 and 1 (it cuts a probability)"
    assert not (tmp_path / "out").exists()


def test_a_second_run_skips_complete_outputs_and_keeps_them(sample_run):
    mask_path = sample_run / "la_022_crop.nii.gz"
    before_mask, before_row = mask_path.read_bytes(), _read_volumes(sample_run)["la_022_crop"]
    assert main(["segment", str(SAMPLE_IMAGE), "--output-dir", str(sample_run), "--format", "nii.gz", "--quiet"]) == 0
    row = _read_volumes(sample_run)["la_022_crop"]
    assert mask_path.read_bytes() == before_mask
    assert row["status"] == "skipped: output exists"
    assert row["volume_ml"] == before_row["volume_ml"]


def test_each_row_names_the_model_file_version_and_cleanup_that_made_its_mask(sample_run):
    row = _read_volumes(sample_run)["la_022_crop"]
    assert row["model"] == "{0.name} {0.version}".format(read_model_config(model_path()))
    assert row["model_sha256"] == hashlib.sha256(model_path().read_bytes()).hexdigest()
    assert row["leftatriumseg_version"] == __version__
    assert row["cleanup_options"].split() == CleanupSettings().options()


def test_a_kept_mask_keeps_the_record_of_what_made_it_and_a_changed_run_is_warned(tmp_path, capsys):
    output = tmp_path / "out"
    segment = ["segment", str(SAMPLE_IMAGE), "--output-dir", str(output), "--format", "nii.gz", "--quiet"]
    assert main([*segment, "--threshold", "0.9"]) == 0
    made_at_0_9 = _read_volumes(output)["la_022_crop"]
    capsys.readouterr()

    assert main(segment) == 0  # default threshold 0.5: the mask of 0.9 is kept, and said to be
    kept = _read_volumes(output)["la_022_crop"]
    assert kept["status"] == "skipped: output exists"
    assert kept["cleanup_options"] == made_at_0_9["cleanup_options"] and "--threshold 0.9" in kept["cleanup_options"]
    assert kept["volume_ml"] == made_at_0_9["volume_ml"]
    warning = capsys.readouterr().err.strip()
    assert warning.startswith(f"warning: {output / 'la_022_crop.nii.gz'}: kept as made by ") and "--overwrite" in warning

    assert main([*segment, "--threshold", "0.9"]) == 0  # as the mask was made: nothing to say
    assert capsys.readouterr().err == ""

    copied = tmp_path / "copied"
    copied.mkdir()
    (copied / "la_022_crop.nii.gz").write_bytes((output / "la_022_crop.nii.gz").read_bytes())
    assert main(["segment", str(SAMPLE_IMAGE), "--output-dir", str(copied), "--format", "nii.gz", "--quiet"]) == 1
    row = _read_volumes(copied)["la_022_crop"]
    assert row["status"] == "failed" and "no table in" in row["error"] and "records which scan made it" in row["error"]
    assert f"error: {copied / 'la_022_crop.nii.gz'}: exists, but no table" in capsys.readouterr().err
    assert (copied / "la_022_crop.nii.gz").read_bytes() == (output / "la_022_crop.nii.gz").read_bytes()


def test_untrusted_model_file_is_refused_with_one_line(tmp_path, capsys):
    model = tmp_path / "model.safetensors"
    model.write_bytes(b"\x80\x04K\x01.")  # a pickle, not safetensors
    assert main(["segment", str(SAMPLE_IMAGE), "--output-dir", str(tmp_path / "out"), "--model", str(model)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and str(model) in error and "safetensors" in error
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["segment", "report"])
def test_output_folder_that_is_a_file_is_refused_with_one_line(tmp_path, capsys, command):
    not_a_folder = tmp_path / "results"
    not_a_folder.write_text("the user's notes")
    inputs = {"segment": [str(SAMPLE_IMAGE)],
              "report": ["--images", str(SAMPLE_IMAGE), "--predictions", str(SAMPLE_LABEL.parent)]}[command]
    for output_dir, message in ((not_a_folder, "--output-dir exists and is not a folder"),
                                (not_a_folder / "under", "cannot write into the output folder (Not a directory)")):
        assert main([command, *inputs, "--output-dir", str(output_dir), "--quiet"]) == 2
        assert capsys.readouterr().err.strip() == f"error: {output_dir}: {message}"
    assert not_a_folder.read_text() == "the user's notes"


@pytest.mark.parametrize("command, expected", [
    (["evaluate", "--predictions", "{missing}", "--labels", "{missing}"], "{missing}: not a folder"),
    (["ablate", "--probabilities", "{missing}", "--labels", "{missing}", "--output", "{out}/table.csv"],
     "{missing}: not a folder"),
    (["report", "--images", str(SAMPLE_IMAGE), "--predictions", "{missing}", "--output-dir", "{out}"],
     "{missing}: not a folder"),
    (["train", "--data", "{missing}", "--output-dir", "{out}", "--folds", "0"], "{missing}: not found (--data takes folders"),
])
def test_missing_input_folders_are_named_in_one_line(command, expected, tmp_path, capsys):
    names = {"missing": tmp_path / "missing", "out": tmp_path / "out"}
    assert main([part.format(**names) for part in command]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and error.startswith("error: " + expected.format(**names))
    assert not names["out"].exists()


@pytest.mark.parametrize("command, existing", [
    (["evaluate", "--predictions", "{missing}", "--labels", "{missing}", "--output", "{out}/table.csv"], "table.csv"),
    (["ablate", "--probabilities", "{missing}", "--labels", "{missing}", "--output", "{out}/table.csv"], "table.csv"),
    (["report", "--images", "{missing}", "--predictions", "{missing}", "--output-dir", "{out}"], "report.html"),
])
def test_existing_outputs_are_kept_and_named_before_any_work(command, existing, tmp_path, capsys):
    names = {"missing": tmp_path / "missing", "out": tmp_path / "out"}
    names["out"].mkdir()
    (names["out"] / existing).write_text("the user's file")
    assert main([part.format(**names) for part in command]) == 2
    assert capsys.readouterr().err.strip() == f"error: {names['out'] / existing}: output exists (use --overwrite to replace it)"
    assert (names["out"] / existing).read_text() == "the user's file"


@pytest.mark.parametrize("settings", [
    CleanupSettings(),
    CleanupSettings(threshold=0.35, keep_largest_component=False, component_gap_mm=7.5, fill_holes=False, closing_radius_mm=2.0),
])
def test_cleanup_options_parse_back_to_the_same_settings(settings):
    """volumes.csv records cleanup settings as segment options, and the Slicer module hands them to its
    worker so: the command line and CleanupSettings.from_options read them back alike."""
    args = build_parser().parse_args(["segment", "x.nii.gz", "--output-dir", "out", *settings.options()])
    assert _cleanup_from(args) == settings
    assert CleanupSettings.from_options(" ".join(settings.options())) == settings


@pytest.mark.parametrize("options, message", [
    ("--threshold", "needs a number"), ("--threshold x", "needs a number"), ("--sharpen", "unknown cleanup option"),
    ("--threshold 2", "must lie between 0 and 1"),
])
def test_unreadable_cleanup_options_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        CleanupSettings.from_options(options)


def test_respaced_folders_parse_to_spacings_and_bad_spacings_are_refused(capsys):
    args = build_parser().parse_args(["train", "--data", "a", "b", "--output-dir", "out",
                                      "--respaced", "a", "0.625,0.625,1.25", "--respaced", "b", "1,1,2"])
    assert args.respaced == {"a": (0.625, 0.625, 1.25), "b": (1.0, 1.0, 2.0)}
    assert build_parser().parse_args(["train", "--data", "a", "--output-dir", "out"]).respaced is None
    for spacing in ("0.625,1.25", "1,1,x", "1,1,0"):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["train", "--data", "a", "--output-dir", "out", "--respaced", "a", spacing])
        assert f"--respaced a {spacing}: the spacing must be x,y,z in mm" in capsys.readouterr().err


@pytest.mark.parametrize("option, value, message", [
    ("--gamma-probability", "1.5", "gamma_probability must be a share between 0 and 1, not 1.5"),
    ("--gamma-probability", "nan", "gamma_probability must be a share between 0 and 1, not nan"),
    ("--iterations", "0", "iterations must be between 1 and 1000000, not 0"),
    ("--iterations", "99999999999999999999", "iterations must be between 1 and 1000000, not 99999999999999999999"),
    ("--max-gain-change", "1.2", "max_gain_change must be at least 0 and under 1, not 1.2"),
    ("--max-offset", "-0.1", "max_offset must be between 0 and 5 (z-score units), not -0.1"),
    ("--max-offset", "inf", "max_offset must be between 0 and 5 (z-score units), not inf"),
    ("--seed", "-1", "seed must be a whole number from 0 to 4294967295, not -1"),
    ("--seed", str(2**70), f"seed must be a whole number from 0 to 4294967295, not {2**70}"),
])
def test_training_settings_out_of_range_are_refused_before_any_work(tmp_path, capsys, option, value, message):
    assert main(["train", "--data", str(tmp_path / "data"), "--output-dir", str(tmp_path / "run"), option, value]) == 2
    assert capsys.readouterr().err.strip() == f"error: training setting {message}"
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("extra, message", [
    (["--respaced", "DATA", "1,1,1", "--respaced", "DATA", "2,2,2"], "--respaced DATA: given twice; which spacing is the scans'?"),
    (["--name", ""], "argument --name: '': words to print on one line are needed"),
    (["--name", "two\nlines"], "words to print on one line are needed"),
    (["--model-version", "1 2\n3"], "argument --model-version: '1 2\\n3': words to print on one line are needed"),
    (["--model-version", " "], "argument --model-version: ' ': words to print on one line are needed"),
])
def test_train_refuses_a_folder_respaced_twice_and_a_name_off_one_line(tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit) as stopped:
        main(["train", "--data", "DATA", "--output-dir", str(tmp_path / "run"), *extra])
    assert stopped.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("extra, message", [
    (["--data", "DATA", "./DATA/"], "error: ./DATA/: given twice among the data folders (as DATA too)"),
    (["--data", "DATA", "--respaced", "DATA", "1,1,1", "--respaced", "./DATA/", "2,2,2"],
     "error: ./DATA/: given twice as a respaced folder (as DATA too); which spacing is the scans'?"),
])
def test_train_refuses_a_folder_given_twice_under_two_spellings(tmp_path, capsys, monkeypatch, extra, message):
    """The last spacing silently won; one folder twice named each of its cases 'listed twice'."""
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--output-dir", str(tmp_path / "run"), *extra]) == 2
    assert capsys.readouterr().err.strip() == message
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("listing, message", [
    ("{}", "needs a 'training' list of entries each with an 'image' and a 'label' path (the Decathlon layout)"),
    ('{"training": [{"image": "imagesTr/a.nii.gz"}]}', "needs a 'training' list of entries each with an 'image'"),
    ('{"training": [{"image": "imagesTr/a.nii.gz", "label": null}]}', "needs a 'training' list of entries each"),
    ('{"training": ["imagesTr/a.nii.gz"]}', "needs a 'training' list of entries each with an 'image'"),
    ('{"training": [', "not a readable dataset.json"),
    ("[" * 100000 + "]" * 100000, "not a readable dataset.json"),
    ('{"training": []}', "its 'training' list is empty"),
    (None, "cannot follow the path"),
])
def test_train_names_a_damaged_data_folder_in_one_line(tmp_path, capsys, listing, message):
    data = tmp_path / "data"
    if listing is None:
        data.symlink_to(data)  # a link loop
    else:
        data.mkdir()
        (data / "dataset.json").write_text(listing)
    assert main(["train", "--data", str(data), "--output-dir", str(tmp_path / "run"), "--folds", "0", "--quiet"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and error.startswith(f"error: {data}") and message in error
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("contents, message", [
    ("image\n", "manifest lists no image (a header row and nothing under it)"),
    ("scan\nimage.nii.gz\n", "manifest needs a header row with an 'image' column"),
    ("image,case,image\na.nii.gz,A1,b.nii.gz\n", "the header names the column 'image' twice; which is meant?"),
    ("image,case\n\n\na.nii.gz,A1\n\n,B\n", "line 6: no image"),  # the file's line, blank ones counted
    ('image,case,note\na.nii.gz,A1,"two\nlines"\nb.nii.gz,../x,\n', "line 4: case name '../x' cannot name a file"),
])
def test_a_manifest_without_images_says_which_part_is_missing(tmp_path, capsys, contents, message):
    manifest = tmp_path / "cohort.csv"
    manifest.write_text(contents)
    assert main(["segment", "--manifest", str(manifest), "--output-dir", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.strip().startswith(f"error: {manifest}: {message}")


def test_an_output_file_where_a_folder_is_or_under_a_file_is_named_in_one_line(tmp_path, capsys):
    predictions, labels = tmp_path / "predictions", tmp_path / "labels"
    for folder in (predictions, labels):
        folder.mkdir()
        (folder / "la_022_crop.nii.gz").write_bytes(SAMPLE_LABEL.read_bytes())
    (tmp_path / "folder").mkdir()
    (tmp_path / "notes").write_text("the user's notes")
    for output, message in ((tmp_path / "folder", "is a folder; the output is a file (give a file's name)"),
                            (tmp_path / "notes" / "scores.csv", f"cannot be written ({tmp_path / 'notes'} is a file, not a folder)")):
        assert main(["evaluate", "--predictions", str(predictions), "--labels", str(labels), "--output", str(output),
                     "--overwrite", "--quiet"]) == 2
        assert capsys.readouterr().err.strip() == f"error: {output}: {message}"
    assert (tmp_path / "notes").read_text() == "the user's notes" and not any((tmp_path / "folder").iterdir())


def test_report_names_missing_images_and_lists_a_cohort_that_failed_whole(tmp_path, capsys):
    predictions = tmp_path / "predictions"
    predictions.mkdir()
    assert main(["report", "--images", str(tmp_path / "scans"), "--predictions", str(predictions), "--output-dir",
                 str(tmp_path / "report")]) == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'scans'}: not found"
    (predictions / "volumes.csv").write_text("case,status,error,output\nla_022_crop,failed,out of memory,\n")
    assert main(["report", "--images", str(SAMPLE_IMAGE), "--predictions", str(predictions), "--output-dir",
                 str(tmp_path / "report")]) == 0
    assert capsys.readouterr().out.strip().endswith(
        f"report of 1 case(s) (1 without pictures: segment or the report failed on them): {tmp_path / 'report' / 'report.html'}")
    page = (tmp_path / "report" / "report.html").read_text(encoding="utf-8")
    assert '<td class="text">la_022_crop</td><td class="text">segment failed: out of memory</td>' in page


def test_a_compressed_scan_named_nii_is_told_to_be_named_nii_gz(tmp_path, capsys):
    """A link or copy named .nii for a .nii.gz file was 'not a NIfTI header', which sent one looking
    at the scan instead of its name."""
    scan = tmp_path / "subject_a.nii"
    scan.symlink_to(SAMPLE_IMAGE)
    assert main(["segment", str(scan), "--output-dir", str(tmp_path / "out"), "--quiet"]) == 1
    assert capsys.readouterr().err.strip() == (
        f"error: {scan}: is gzip-compressed, though its name ends in .nii; name it .nii.gz")


def test_a_run_whose_working_directory_was_deleted_goes_on(tmp_path, monkeypatch, capsys):
    """Asking for the working directory at each case, to show the mask's path, stopped such a run
    after its first case."""
    images = tmp_path / "images"
    images.mkdir()
    for name in ("a", "b"):
        (images / f"{name}.nii.gz").write_bytes(SAMPLE_IMAGE.read_bytes())
    gone = tmp_path / "gone"
    gone.mkdir()
    monkeypatch.chdir(gone)
    gone.rmdir()
    assert main(["segment", str(images), "--output-dir", str(tmp_path / "out"), "--format", "nii.gz"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if ": left atrium " in line]
    assert [line.split(" -> ")[1] for line in lines] == [str(tmp_path / "out" / f"{name}.nii.gz") for name in "ab"]


def test_train_help_shows_the_settings_defaults_without_importing_torch():
    """It showed 'default: TrainingSettings.iterations'; importing the settings must not cost torch's import."""
    script = ("import contextlib, io, sys\n"
              "from LeftAtriumSegLib.cli import build_parser\n"
              "text = io.StringIO()\n"
              "with contextlib.redirect_stdout(text), contextlib.suppress(SystemExit):\n"
              "    build_parser().parse_args(['train', '--help'])\n"
              "print(text.getvalue())\n"
              "print('torch imported' if 'torch' in sys.modules else 'no torch')\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    help_text = " ".join(result.stdout.split())
    assert "optimiser steps per network (default 4800)" in help_text
    assert "(default: axial coronal sagittal)" in help_text and "TrainingSettings" not in help_text
    assert result.stdout.strip().endswith("no torch")


def test_one_scan_given_twice_is_said_so(tmp_path, capsys):
    """It was told to rename one of two inputs of one case name: the same file, named twice."""
    assert main(["segment", str(SAMPLE_IMAGE), str(SAMPLE_IMAGE), "--output-dir", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.strip() == f"error: {SAMPLE_IMAGE}: given twice (once is enough)"
