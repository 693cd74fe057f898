"""Pictures and the HTML report: meshes with the right volume, montages on the atrium, a page
that renders in a real browser."""

import hashlib
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import SAMPLE_IMAGE, SAMPLE_LABEL, besides_copies_of_one_scan, ellipsoid_phantom
from PIL import Image

from LeftAtriumSegLib.batch import read_clinical
from LeftAtriumSegLib.cli import main
from LeftAtriumSegLib.errors import LeftAtriumSegError
from LeftAtriumSegLib.measurements import body_surface_area_m2, grade_lavi, measure_volume
from LeftAtriumSegLib.models import model_path
from LeftAtriumSegLib.report import (
    PALETTE,
    PREDICTION_RGB,
    atrium_slices,
    report_case,
    surface_mesh,
    write_montage,
    write_slice_gif,
)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _orange(pixels: np.ndarray) -> np.ndarray:
    """Pixels of the prediction's orange (230, 159, 0), shaded or not: red high, green about two
    thirds of it, no blue. Red and green contours, which colour-blind readers cannot tell apart,
    are not orange."""
    red, green, blue = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    return (red > 100) & (green > 0.45 * red) & (green < 0.85 * red) & (blue < 0.35 * red)


def _screenshot(page, shot, profile):
    result = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
         "--window-size=1400,1800", "--virtual-time-budget=15000", f"--screenshot={shot}", page.as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    console = [line for line in result.stderr.splitlines() if "CONSOLE" in line]
    errors = [line for line in console if "Uncaught" in line or "Error:" in line]
    assert not errors, errors
    return np.asarray(Image.open(shot).convert("RGB")).astype(int)


def test_mesh_encloses_the_voxel_volume_of_a_phantom_on_an_oblique_grid():
    image, mask, _ = ellipsoid_phantom(size=(80, 72, 48), radii_mm=(20.0, 16.0, 14.0))
    mesh = surface_mesh(mask, image)
    assert mesh.is_watertight
    assert mesh.volume > 0  # faces point outwards
    voxel_ml = measure_volume(mask, image.GetSpacing()).volume_ml
    assert mesh.volume / 1000 == pytest.approx(voxel_ml, rel=0.03)
    # Vertices are physical: the mesh centre is the phantom's centre.
    centre = image.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in image.GetSize()])
    np.testing.assert_allclose(mesh.centroid, centre, atol=0.5)


def test_montage_shows_only_and_evenly_the_slices_that_hold_the_atrium(tmp_path):
    mask = np.zeros((60, 40, 40), bool)
    mask[17:43, 10:30, 10:30] = True
    indices = atrium_slices(mask, None, count=12)
    assert len(indices) == 12 and indices[0] == 17 and indices[-1] == 42
    assert all(mask[i].any() for i in indices)
    image = np.random.default_rng(0).normal(100, 10, mask.shape)
    shown = write_montage(tmp_path / "m.png", image, mask, None, (1.0, 1.0, 1.0), "phantom")
    assert shown == indices
    pixels = np.asarray(Image.open(tmp_path / "m.png").convert("RGB")).astype(int)
    assert _orange(pixels).sum() > 12 * 40  # a contour drawn in every panel


def test_case_pictures_are_written_and_never_overwritten_unasked(tmp_path, sample_image, sample_label):
    report = report_case("sample", sample_image, sample_label, sample_label, tmp_path)
    for path in (report.montage_png, report.slices_gif, report.surface_stl, report.surface_png):
        assert path.stat().st_size > 1000
    assert report.dice == 1.0
    assert report.mesh_volume_ml == pytest.approx(report.volume_ml, rel=0.05)
    page = (tmp_path / "sample.html").read_text(encoding="utf-8")
    assert '<a href="sample_surface.stl">' in page and '<a href="sample_surface.png">' in page
    with pytest.raises(FileExistsError):
        report_case("sample", sample_image, sample_label, None, tmp_path)
    # A case whose page is there already writes none of its pictures beside it.
    (tmp_path / "again").mkdir()
    (tmp_path / "again" / "sample.html").write_text("the user's own page")
    with pytest.raises(FileExistsError):
        report_case("sample", sample_image, sample_label, None, tmp_path / "again")
    assert [path.name for path in (tmp_path / "again").iterdir()] == ["sample.html"]


def test_slice_animation_shows_the_atrium_and_25_mm_around_it_in_exact_colours(tmp_path):
    mask = np.zeros((80, 100, 120), bool)
    mask[20:30, 30:50, 40:60] = True
    image = np.random.default_rng(0).normal(100, 10, mask.shape)
    # 25 mm is 13 slices of 2 mm and 50 rows or columns of 0.5 mm; the array ends first below.
    box = write_slice_gif(tmp_path / "s.gif", image, mask, None, (2.0, 0.5, 0.5))
    assert box == (slice(7, 43), slice(0, 100), slice(0, 110))
    gif = Image.open(tmp_path / "s.gif")
    assert gif.n_frames == 36 and gif.size == (110, 100)
    gif.seek(25 - 7)
    frame = np.asarray(gif.convert("RGB"))
    # The contour, one pixel wide around the 20 x 20 square, is the prediction's orange exactly:
    # no colour was quantized away.
    assert np.all(frame[30, 40:60] == PREDICTION_RGB) and np.all(frame[49, 40:60] == PREDICTION_RGB)
    assert np.count_nonzero(np.all(frame == PREDICTION_RGB, axis=-1)) == 4 * 19
    assert {tuple(c) for c in frame.reshape(-1, 3)} <= {tuple(c) for c in PALETTE}


def test_slice_animation_shows_oblong_voxels_in_their_true_shape(tmp_path):
    mask = np.zeros((40, 100, 120), bool)
    mask[20:30, 30:50, 40:60] = True  # 20 mm tall, 10 mm wide
    image = np.random.default_rng(0).normal(100, 10, mask.shape)
    write_slice_gif(tmp_path / "s.gif", image, mask, None, (2.0, 1.0, 0.5))
    gif = Image.open(tmp_path / "s.gif")
    gif.seek(25 - 7)
    rows, columns = np.nonzero(np.all(np.asarray(gif.convert("RGB")) == PREDICTION_RGB, axis=-1))
    assert (rows.max() - rows.min() + 1, columns.max() - columns.min() + 1) == (40, 20)  # pixels of 0.5 mm


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is installed by .ci/run (apt package chromium)")
def test_html_report_renders_in_headless_chromium_without_console_errors(tmp_path):
    predictions, labels = tmp_path / "predictions", tmp_path / "labels"
    predictions.mkdir()
    labels.mkdir()
    # A prediction that differs from the reference: the sample's label, eroded.
    label = sitk.ReadImage(str(SAMPLE_LABEL))
    sitk.WriteImage(sitk.BinaryErode(label, [1, 1, 1]), str(predictions / "la_022_crop.nii.gz"))
    shutil.copy(SAMPLE_LABEL, labels / "la_022_crop.nii.gz")
    (tmp_path / "clinical.csv").write_text("case,height_cm,weight_kg\nla_022_crop,172,70\n")
    output = tmp_path / "report"
    assert main(["report", "--images", str(SAMPLE_IMAGE), "--predictions", str(predictions), "--labels", str(labels),
                 "--clinical", str(tmp_path / "clinical.csv"), "--output-dir", str(output), "--quiet"]) == 0
    page = (output / "report.html").read_text(encoding="utf-8")
    predicted_ml = measure_volume(sitk.GetArrayFromImage(sitk.ReadImage(str(predictions / "la_022_crop.nii.gz"))) > 0,
                                  label.GetSpacing()).volume_ml
    lavi = round(predicted_ml / body_surface_area_m2(172, 70), 1)
    assert f"<td>{predicted_ml:.1f}</td>" in page and f"<td>{lavi:.1f}</td><td>{grade_lavi(lavi)}</td>" in page
    assert "Bland-Altman" in page and '<script src="plotly.min.js">' in page and "data:image" not in page

    pixels = _screenshot(output / "report.html", tmp_path / "summary.png", tmp_path / "profile")
    assert pixels.std() > 20, "blank page"
    assert _orange(pixels).sum() > 2000, "the volume histogram is missing"
    case_pixels = _screenshot(output / "la_022_crop.html", tmp_path / "case.png", tmp_path / "profile")
    assert _orange(case_pixels).sum() > 2000, "the rendered mesh and contours are missing"
    # The plotly figures drew their axes (the scatter's title text is rendered into the page).
    assert "Predicted vs reference volume" in page


def test_summary_lists_flagged_cases_first_and_stays_small_for_a_large_cohort(tmp_path):
    from LeftAtriumSegLib.report import CaseReport, write_html_report

    def case(index):
        flagged = index % 20 == 7
        return CaseReport(f"case_{index:04d}", 60.0 + index % 40, tmp_path / "m.png", tmp_path / "s.gif",
                          tmp_path / "x.stl", tmp_path / "x.png", 60.0, reference_ml=62.0 + index % 40, dice=0.9, qc="review" if flagged else "ok",
                          qc_reasons="the three views' networks disagree" if flagged else "")

    write_html_report(tmp_path / "report.html", [case(index) for index in range(1000)])
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    rows = re.findall(r'<tr class="(\w*)"><td class="text"><a href="(case_\d+)\.html">', page)
    assert len(rows) == 1000
    assert [flag for flag, _ in rows[:50]] == ["review"] * 50 and {flag for flag, _ in rows[50:]} == {"ok"}
    assert "50 flagged for review (50 the three views&#x27; networks disagree), listed first" in page
    assert "the three views&#x27; networks disagree" in page
    assert (tmp_path / "report.html").stat().st_size < 1_000_000  # plotly.js is beside it, once
    assert (tmp_path / "plotly.min.js").stat().st_size > 1_000_000


def test_summary_lists_failures_first_links_any_case_name_and_scores_the_cases_with_a_reference(tmp_path):
    from urllib.parse import unquote

    from LeftAtriumSegLib.report import CaseReport, write_html_report

    def case(name, volume_ml, reference_ml, qc):
        return CaseReport(name, volume_ml, tmp_path / "m.png", tmp_path / "s.gif", tmp_path / "x.stl",
                          tmp_path / "x.png", volume_ml, reference_ml=reference_ml, dice=None if reference_ml is None else 0.9, qc=qc)

    cases = [case("a#1", 60.0, 50.0, "ok"), case("b%41", 80.0, 90.0, "ok"), case("c", 70.0, None, ""),
             case("d", 65.0, None, "review")]
    write_html_report(tmp_path / "report.html", cases, left_out=[("e", "segment failed: image has constant intensity")])
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    order = re.findall(r'<tr class="(\w*)"><td class="text">(?:<a href="([^"]+)">)?([^<]+)<', page)
    assert [(flag, name) for flag, _, name in order] == [("failed", "e"), ("review", "d"), ("", "c"), ("ok", "a#1"),
                                                         ("ok", "b%41")]
    # Each link, read as a browser reads it, names the case's page file.
    assert [unquote(link) for _, link, _ in order[1:]] == ["d.html", "c.html", "a#1.html", "b%41.html"]
    assert "segment failed: image has constant intensity" in page and "5 case(s): 1 without pictures" in page
    # Bland-Altman over the two cases with a reference: bias (-10 + 10) / 2 = 0.
    assert "Over the 2 of 4 cases that have a reference." in page and "bias +0.0 mL" in page


def test_report_says_what_made_the_masks(tmp_path):
    predictions = tmp_path / "predictions"
    assert main(["segment", str(SAMPLE_IMAGE), "--output-dir", str(predictions), "--format", "nii.gz",
                 "--threshold", "0.6", "--quiet"]) == 0
    assert main(["report", "--images", str(SAMPLE_IMAGE), "--predictions", str(predictions),
                 "--output-dir", str(tmp_path / "report"), "--quiet"]) == 0
    page = (tmp_path / "report" / "report.html").read_text(encoding="utf-8")
    sha256 = hashlib.sha256(model_path().read_bytes()).hexdigest()
    assert f"(model file {sha256[:12]}) with cleanup &#x27;--threshold 0.6 " in page and "(1 of 1 cases)" in page

    (predictions / "volumes.csv").unlink()  # masks without segment's table: said so, not guessed
    assert main(["report", "--images", str(SAMPLE_IMAGE), "--predictions", str(predictions),
                 "--output-dir", str(tmp_path / "report_unrecorded"), "--quiet"]) == 0
    page = (tmp_path / "report_unrecorded" / "report.html").read_text(encoding="utf-8")
    assert "Masks made by: a run this folder&#x27;s table has no record of (1 of 1 cases)." in page

    # A mask replaced since its run (edited, or copied in) is not credited to the run's record.
    assert main(["segment", str(SAMPLE_IMAGE), "--output-dir", str(predictions), "--format", "nii.gz", "--overwrite",
                 "--quiet"]) == 0
    (predictions / "la_022_crop.nii.gz").write_bytes(SAMPLE_LABEL.read_bytes())
    assert main(["report", "--images", str(SAMPLE_IMAGE), "--predictions", str(predictions),
                 "--output-dir", str(tmp_path / "report_replaced"), "--quiet"]) == 0
    page = (tmp_path / "report_replaced" / "report.html").read_text(encoding="utf-8")
    assert "Masks made by: a run this folder&#x27;s table has no record of (1 of 1 cases)." in page


def test_a_clinical_table_or_references_that_name_no_case_here_are_said(tmp_path, capsys):
    """Rows named otherwise (``LA_003``) gave no index, and references named otherwise no Dice, unsaid."""
    images, predictions = _report_folders(tmp_path, "la_003")
    clinical, labels = tmp_path / "clinical.csv", tmp_path / "labels"
    clinical.write_text("case,height_cm,weight_kg\nLA_003,170,70\n")
    labels.mkdir()
    (labels / "p03.nii.gz").write_bytes(SAMPLE_LABEL.read_bytes())
    capsys.readouterr()
    assert main(["report", "--images", str(images), "--predictions", str(predictions), "--labels", str(labels),
                 "--clinical", str(clinical), "--output-dir", str(tmp_path / "report"), "--quiet"]) == 0
    assert capsys.readouterr().err.splitlines() == [
        f"warning: {clinical}: none of its cases is a case here (it names LA_003; here: la_003): no LA volume index "
        "is given",
        f"warning: {labels}: holds no reference mask of a case here (it has p03; here: la_003): no Dice is given"]
    page = (tmp_path / "report" / "la_003.html").read_text(encoding="utf-8")
    assert "Orange contours: prediction." in page  # no blue contour is drawn

    assert main(["segment", str(images), "--clinical", str(clinical), "--output-dir", str(tmp_path / "out"),
                 "--quiet"]) == 0
    assert capsys.readouterr().err.splitlines() == [
        f"warning: {clinical}: none of its cases is a case here (it names LA_003; here: la_003): no LA volume index "
        "is given"]
    # One row among others named with capitals: that case alone went without its index.
    second_scan = images / "la_004.nii.gz"
    second_scan.write_bytes(SAMPLE_IMAGE.read_bytes())
    clinical.write_text("case,height_cm,weight_kg\nLA_003,170,70\nla_004,180,80\n")
    assert main(["segment", str(images), "--clinical", str(clinical), "--output-dir", str(tmp_path / "out2"),
                 "--quiet"]) == 0
    assert besides_copies_of_one_scan(capsys.readouterr().err) == [
        f"warning: {clinical}: rows named otherwise than their case ('LA_003' for 'la_003'): no LA volume index for "
        "those cases (names must match exactly)"]
    missing = tmp_path / "cohort.csv"  # said as a missing --clinical is
    assert main(["segment", "--manifest", str(missing), "--output-dir", str(tmp_path / "out"), "--quiet"]) == 2
    assert capsys.readouterr().err.strip() == f"error: {missing}: file not found"


def test_a_mask_is_not_drawn_over_another_scan_of_its_grid(tmp_path, capsys):
    """Another subject's scan under the case's name, on the same grid: the mask and its "ok" were
    shown over it."""
    predictions, images = tmp_path / "predictions", tmp_path / "other"
    assert main(["segment", str(SAMPLE_IMAGE), "--output-dir", str(predictions), "--format", "nii.gz",
                 "--quiet"]) == 0
    images.mkdir()
    other = sitk.ReadImage(str(SAMPLE_IMAGE))
    sitk.WriteImage(sitk.Flip(other, [True, False, False]), str(images / "la_022_crop.nii.gz"))  # same grid
    capsys.readouterr()
    assert main(["report", "--images", str(images), "--predictions", str(predictions),
                 "--output-dir", str(tmp_path / "report"), "--quiet"]) == 1
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"error: {images / 'la_022_crop.nii.gz'}: is not the scan its mask "
                            f"{predictions / 'la_022_crop.nii.gz'} was made from (SHA-256 ")
    assert not (tmp_path / "report" / "la_022_crop.html").exists()


def test_clinical_table_leaves_blank_cases_out_and_refuses_implausible_values(tmp_path, capsys):
    clinical = tmp_path / "clinical.csv"
    clinical.write_text("case,height_cm,weight_kg,notes\nunknown,,70\nknown,172,70.5\ncut_short\nspaced ,180, 80\n")
    assert read_clinical(str(clinical)) == {"unknown": None, "known": (172.0, 70.5), "cut_short": None,
                                            "spaced": (180.0, 80.0)}
    for weight, message in (("seventy", "weight_kg 'seventy' is not a number"), ("7_0", "weight_kg '7_0' is not a number"),
                            ("70,5", "weight_kg '70,5' is not a number \\(a decimal comma\\? write a point\\)")):
        clinical.write_text(f'case,height_cm,weight_kg\nknown,172,"{weight}"\n')
        with pytest.raises(LeftAtriumSegError, match=f"line 2 \\(case known\\): {message}$"):
            read_clinical(str(clinical))

    clinical.write_text("case,height_cm,weight_kg\nknown,172,70\nin_metres,1.72,70\n")
    (tmp_path / "predictions").mkdir()
    assert main(["report", "--images", str(tmp_path / "images"), "--predictions", str(tmp_path / "predictions"),
                 "--clinical", str(clinical), "--output-dir", str(tmp_path / "report")]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: {clinical}: line 3 (case in_metres): height 1.72 cm is outside 40-250 cm (given in metres or inches?)")
    assert not (tmp_path / "report").exists()


def test_a_bad_mask_is_one_line_naming_that_mask_once(tmp_path, capsys):
    predictions, labels = tmp_path / "predictions", tmp_path / "labels"
    predictions.mkdir()
    labels.mkdir()
    (predictions / "la_022_crop.nii.gz").write_bytes(SAMPLE_LABEL.read_bytes())
    (labels / "la_022_crop.nii.gz").write_bytes(SAMPLE_IMAGE.read_bytes())  # the MRI given as its label
    assert main(["report", "--images", str(SAMPLE_IMAGE), "--predictions", str(predictions), "--labels", str(labels),
                 "--output-dir", str(tmp_path / "report"), "--quiet"]) == 1
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"error: {labels / 'la_022_crop.nii.gz'}: is not a mask: it holds ")
    assert error.count("la_022_crop") == 1 and "\n" not in error


def test_a_mask_that_cannot_be_read_fails_its_case_alone(tmp_path, capsys):
    images, predictions = tmp_path / "images", tmp_path / "predictions"
    images.mkdir(), predictions.mkdir()
    for case in ("a", "b"):
        (images / f"{case}.nii.gz").write_bytes(SAMPLE_IMAGE.read_bytes())
    (predictions / "a.nii.gz").write_bytes(SAMPLE_LABEL.read_bytes())
    (predictions / "b.nii.gz").mkdir()  # not a file, yet the table records it
    (predictions / "volumes.csv").write_text("case,status,output,output_sha256\nb,ok,b.nii.gz,0123\n")
    assert main(["report", "--images", str(images), "--predictions", str(predictions),
                 "--output-dir", str(tmp_path / "report"), "--quiet"]) == 1
    [error] = capsys.readouterr().err.strip().splitlines()
    assert error.startswith("error: ") and str(predictions / "b.nii.gz") in error
    assert (tmp_path / "report" / "a.html").is_file() and not (tmp_path / "report" / "b.html").exists()
    page = (tmp_path / "report" / "report.html").read_text(encoding="utf-8")
    assert '<tr class="failed"><td class="text">b</td><td class="text">report failed: ' in page


def test_a_case_segment_failed_on_is_listed_in_the_summary(tmp_path):
    images, predictions = tmp_path / "images", tmp_path / "predictions"
    images.mkdir(), predictions.mkdir()
    for case in ("a", "b"):
        (images / f"{case}.nii.gz").write_bytes(SAMPLE_IMAGE.read_bytes())
    (predictions / "a.nii.gz").write_bytes(SAMPLE_LABEL.read_bytes())
    (predictions / "volumes.csv").write_text("case,status,error,output\nb,failed,out of memory,\n")
    assert main(["report", "--images", str(images), "--predictions", str(predictions),
                 "--output-dir", str(tmp_path / "report"), "--quiet"]) == 0
    page = (tmp_path / "report" / "report.html").read_text(encoding="utf-8")
    assert '<tr class="failed"><td class="text">b</td><td class="text">segment failed: out of memory</td>' in page
    assert "2 case(s): 1 without pictures" in page


def test_cases_the_report_cannot_show_are_listed_and_two_scans_of_one_case_refused(tmp_path, capsys):
    """A mask deleted after its run was left out unsaid, its row still "ok"; a case named "report"
    took the summary's file name; a second scan of a case had its pictures drawn over the first's."""
    images, predictions, output = tmp_path / "images", tmp_path / "predictions", tmp_path / "report"
    images.mkdir(), predictions.mkdir()
    for case in ("a", "gone", "report"):
        (images / f"{case}.nii.gz").write_bytes(SAMPLE_IMAGE.read_bytes())
    for case in ("a", "report"):
        (predictions / f"{case}.nii.gz").write_bytes(SAMPLE_LABEL.read_bytes())
    (predictions / "volumes.csv").write_text("case,status,output\ngone,ok,gone.nii.gz\n")
    assert main(["report", "--images", str(images), "--predictions", str(predictions), "--output-dir", str(output),
                 "--quiet"]) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"error: {images / 'gone.nii.gz'}: no mask in {predictions}, though its table there says 'ok'",
        f"error: {images / 'report.nii.gz'}: a case named 'report' would take the summary's name, report.html; "
        "rename the scan and its mask"]
    page = (output / "report.html").read_text(encoding="utf-8")
    assert "3 case(s): 2 without pictures" in page and (output / "a.html").is_file()
    assert main(["report", "--images", str(images), "--predictions", str(predictions), "--output-dir", str(output),
                 "--quiet", "--overwrite"]) == 1
    assert (output / "report.html").read_text(encoding="utf-8") == page  # the same report, the same page
    capsys.readouterr()

    sitk.WriteImage(sitk.ReadImage(str(SAMPLE_IMAGE)), str(images / "a.nrrd"))
    assert main(["report", "--images", str(images), "--predictions", str(predictions), "--output-dir",
                 str(tmp_path / "again"), "--quiet"]) == 2
    assert capsys.readouterr().err.startswith("error: two inputs have the case name 'a': ")


def _report_folders(tmp_path, *cases):
    images, predictions = tmp_path / "images", tmp_path / "predictions"
    images.mkdir(), predictions.mkdir()
    for case in cases:
        (images / f"{case}.nii.gz").write_bytes(SAMPLE_IMAGE.read_bytes())
        (predictions / f"{case}.nii.gz").write_bytes(SAMPLE_LABEL.read_bytes())
    return images, predictions


def _report_of_one_case(tmp_path):
    """Case a's folders, the report's folder and the command that reports it (quiet)."""
    images, predictions = _report_folders(tmp_path, "a")
    output = tmp_path / "report"
    return predictions, output, ["report", "--images", str(images), "--predictions", str(predictions),
                                 "--output-dir", str(output), "--quiet"]


def test_an_interrupted_report_goes_on_where_it_stopped(tmp_path):
    """A cohort's report takes a second a case: stopped, it had to start over with --overwrite."""
    images, predictions = _report_folders(tmp_path, "a", "b", "c")
    output = tmp_path / "report"
    arguments = ["report", "--images", str(images), "--predictions", str(predictions), "--output-dir", str(output)]
    child = textwrap.dedent(f"""
        import signal, sys
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a shell's background job ignores it
        from LeftAtriumSegLib.cli import main
        sys.exit(main({arguments + ["--quiet"]!r}))
    """)
    run = subprocess.Popen([sys.executable, "-c", child], stderr=subprocess.PIPE, encoding="utf-8")
    deadline = time.monotonic() + 120
    while not (output / "a.html").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    run.send_signal(signal.SIGINT)
    assert run.wait(timeout=120) == 130
    assert run.stderr.read().splitlines()[-1] == "interrupted: the same command goes on where it stopped"
    done = {path.name: path.stat().st_mtime_ns for path in output.iterdir()}
    assert "report.html" not in done and not any(name.startswith(".") for name in done)
    # Whole cases only: a page and every picture, or nothing of the case.
    for case in ("a", "b", "c"):
        pictures = {f"{case}_{kind}" for kind in ("montage.png", "slices.gif", "surface.stl", "surface.png")}
        assert (pictures <= set(done)) == (f"{case}.html" in done) and (pictures & set(done) in (set(), pictures))

    result = subprocess.run([sys.executable, "-m", "LeftAtriumSegLib.cli", *arguments], capture_output=True,
                            encoding="utf-8", timeout=300)  # the progress bar's blocks
    assert result.returncode == 0, result.stderr
    kept = sum(name.endswith(".html") for name in done)
    assert result.stdout.strip().endswith(f"report of 3 case(s) ({kept} kept from an earlier run): {output / 'report.html'}")
    assert all((output / name).stat().st_mtime_ns == mtime for name, mtime in done.items())  # not drawn again
    summary = (output / "report.html").read_text(encoding="utf-8")
    assert all(f'href="{case}.html"' in summary for case in "abc")


def test_a_page_made_from_another_mask_is_not_taken_up_and_overwrite_clears_a_failed_case(tmp_path, capsys):
    predictions, output, arguments = _report_of_one_case(tmp_path)
    assert main(arguments) == 0
    (output / "report.html").unlink()  # as if stopped before the summary
    label = sitk.ReadImage(str(SAMPLE_LABEL))
    sitk.WriteImage(sitk.BinaryErode(label > 0, [2, 2, 2]), str(predictions / "a.nii.gz"))  # segmented again
    capsys.readouterr()
    assert main(arguments) == 1
    assert capsys.readouterr().err.strip() == (
        f"error: {output / 'a.html'}: exists, made from other inputs than now (mask_sha256); --overwrite draws a again")
    assert main([*arguments, "--overwrite"]) == 0
    eroded_ml = measure_volume(sitk.GetArrayFromImage(sitk.BinaryErode(label > 0, [2, 2, 2])) > 0,
                               label.GetSpacing()).volume_ml
    assert f"left atrium {eroded_ml:.1f} mL" in (output / "a.html").read_text(encoding="utf-8")
    drawn = {path.name: path.stat().st_mtime_ns for path in output.glob("a*")}
    assert main([*arguments, "--overwrite"]) == 0  # the same inputs: kept, as they would be drawn the same
    assert {path.name: path.stat().st_mtime_ns for path in output.glob("a*")} == drawn

    # Killed while it placed a's files (between renames, the signals held against anything gentler):
    # its new pictures beside its old page, which would pass for them. The next run draws a again.
    (output / ".placing-a").touch()
    (output / "a_montage.png").write_bytes(b"a picture of something else")
    (output / "report.html").unlink()
    assert main(arguments) == 0
    assert not (output / ".placing-a").exists()
    assert Image.open(output / "a_montage.png").size[0] > 0 and (output / "a.html").stat().st_mtime_ns > drawn["a.html"]

    (predictions / "a.nii.gz").write_bytes(b"not a mask")
    assert main([*arguments, "--overwrite"]) == 1
    assert sorted(path.name for path in output.iterdir()) == ["plotly.min.js", "report.html"]


def test_a_signal_while_a_case_is_placed_takes_effect_once_it_is_placed():
    """Blocking the signals in the main thread did not hold them: another thread of the process
    (the numerical libraries' own) received Ctrl-C, and Python raised it in the main thread."""
    import os

    from LeftAtriumSegLib.batch import deferred_signals

    placed = []
    with pytest.raises(KeyboardInterrupt):
        with deferred_signals():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.2)  # Python runs its handler at the next instruction: here, had it not been swapped
            placed.append("page")
    assert placed == ["page"]


def test_a_page_without_a_readable_record_is_drawn_again_only_when_asked(tmp_path, capsys):
    predictions, output, arguments = _report_of_one_case(tmp_path)
    assert main(arguments) == 0
    page = output / "a.html"
    for damaged in ('{"made_from": ', "[1]", ""):  # cut short, not an object, no record (a page of 0.16)
        page.write_text(re.sub(r'<script type="application/json" id="case-record">.*?</script>',
                               f'<script type="application/json" id="case-record">{damaged}</script>' if damaged else "",
                               page.read_text(encoding="utf-8"), flags=re.DOTALL), encoding="utf-8")
        (output / "report.html").unlink()
        capsys.readouterr()
        assert main(arguments) == 1
        assert capsys.readouterr().err.strip() == (
            f"error: {page}: exists, but records no inputs (made by a version before 0.17, or edited); --overwrite "
            "draws a again")
        assert main([*arguments, "--overwrite"]) == 0 and 'id="case-record">{"made_from": {' in page.read_text()


def test_an_empty_mask_drawn_over_a_case_leaves_no_earlier_surface(tmp_path):
    predictions, output, arguments = _report_of_one_case(tmp_path)
    arguments.append("--overwrite")
    assert main(arguments) == 0 and (output / "a_surface.stl").is_file()
    empty = sitk.ReadImage(str(SAMPLE_LABEL)) * 0
    sitk.WriteImage(empty, str(predictions / "a.nii.gz"))
    assert main(arguments) == 0
    assert not (output / "a_surface.stl").exists() and not (output / "a_surface.png").exists()
    assert "No surface: the mask is empty." in (output / "a.html").read_text(encoding="utf-8")


def test_a_scan_a_manifest_named_otherwise_is_reported_under_that_name(tmp_path):
    images, predictions, output = tmp_path / "images", tmp_path / "predictions", tmp_path / "report"
    images.mkdir()
    (images / "scan_17.nii.gz").write_bytes(SAMPLE_IMAGE.read_bytes())
    (tmp_path / "cohort.csv").write_text("image,case\nimages/scan_17.nii.gz,patient_a\n")
    assert main(["segment", "--manifest", str(tmp_path / "cohort.csv"), "--output-dir", str(predictions),
                 "--format", "nii.gz", "--quiet"]) == 0
    assert main(["report", "--images", str(images), "--predictions", str(predictions), "--output-dir", str(output),
                 "--quiet"]) == 0
    assert (output / "patient_a.html").is_file() and 'href="patient_a.html"' in (output / "report.html").read_text()


def test_a_scan_is_paired_with_the_mask_its_row_records_not_the_one_of_its_file_name(tmp_path):
    """A manifest that swapped names (a.nii.gz named b, b.nii.gz named a): by file name each scan got
    the other's mask. Here the two lie on grids 10 mm apart, so a wrong pairing fails."""
    images, predictions, output = tmp_path / "images", tmp_path / "predictions", tmp_path / "report"
    images.mkdir(), predictions.mkdir()
    scan, label = sitk.ReadImage(str(SAMPLE_IMAGE)), sitk.ReadImage(str(SAMPLE_LABEL))
    for name, shift in (("a", 0.0), ("b", 10.0)):
        origin = [value + shift for value in scan.GetOrigin()]
        scan.SetOrigin(origin), label.SetOrigin(origin)
        sitk.WriteImage(scan, str(images / f"{name}.nii.gz"))
        sitk.WriteImage(label, str(predictions / f"{'b' if name == 'a' else 'a'}.nii.gz"))  # named the other way
    (predictions / "volumes.csv").write_text(f"case,status,input,output\nb,ok,{images / 'a.nii.gz'},b.nii.gz\n"
                                             f"a,ok,{images / 'b.nii.gz'},a.nii.gz\n")
    assert main(["report", "--images", str(images), "--predictions", str(predictions), "--output-dir", str(output),
                 "--quiet"]) == 0


def test_an_empty_mask_is_reported_with_its_scan_and_no_surface(tmp_path):
    images, predictions = tmp_path / "images", tmp_path / "predictions"
    images.mkdir(), predictions.mkdir()
    (images / "empty.nii.gz").write_bytes(SAMPLE_IMAGE.read_bytes())
    label = sitk.ReadImage(str(SAMPLE_LABEL))
    sitk.WriteImage(label * 0, str(predictions / "empty.nii.gz"))  # segment writes such a mask, flagged
    output = tmp_path / "report"
    assert main(["report", "--images", str(images), "--predictions", str(predictions), "--output-dir", str(output),
                 "--quiet"]) == 0
    assert not (output / "empty_surface.stl").exists() and not (output / "empty_surface.png").exists()
    assert "No surface: the mask is empty." in (output / "empty.html").read_text(encoding="utf-8")
    # No atrium to zoom on: the montage and the animation show the whole scan.
    assert Image.open(output / "empty_slices.gif").n_frames == label.GetSize()[2]
    assert "<td>0.0</td>" in (output / "report.html").read_text(encoding="utf-8")


def test_the_row_that_records_a_mask_is_found_in_any_table(tmp_path):
    images, predictions = tmp_path / "images", tmp_path / "predictions"
    images.mkdir(), predictions.mkdir()
    (images / "a.nii.gz").write_bytes(SAMPLE_IMAGE.read_bytes())
    (predictions / "a.nii.gz").write_bytes(SAMPLE_LABEL.read_bytes())
    sha256 = hashlib.sha256(SAMPLE_LABEL.read_bytes()).hexdigest()
    # An older whole run's row, and the row of the sharded run that made the mask in place, not merged yet.
    (predictions / "volumes.csv").write_text(f"case,status,output,output_sha256,qc,qc_reasons\na,ok,a.nii.gz,{'0' * 64},ok,\n")
    (predictions / "volumes.shard-1-of-2.csv").write_text(
        f"case,status,output,output_sha256,qc,qc_reasons\na,ok,a.nii.gz,{sha256},review,the networks disagree\n")
    assert main(["report", "--images", str(images), "--predictions", str(predictions),
                 "--output-dir", str(tmp_path / "report"), "--quiet"]) == 0
    page = (tmp_path / "report" / "report.html").read_text(encoding="utf-8")
    assert '<tr class="review"><td class="text"><a href="a.html">a</a></td><td class="text">review: the networks disagree' in page


def test_two_links_to_one_scan_are_two_cases_as_segment_named_them(tmp_path, capsys):
    """report named both after one row found through the links' target, and refused the whole run."""
    scans, predictions = tmp_path / "scans", tmp_path / "predictions"
    scans.mkdir()
    (tmp_path / "scan.nii.gz").write_bytes(SAMPLE_IMAGE.read_bytes())
    for case in ("a", "b"):
        (scans / f"{case}.nii.gz").symlink_to(tmp_path / "scan.nii.gz")
    assert main(["segment", str(scans), "--output-dir", str(predictions), "--quiet"]) == 0
    assert main(["report", "--images", str(scans), "--predictions", str(predictions),
                 "--output-dir", str(tmp_path / "report"), "--quiet"]) == 0
    assert (tmp_path / "report" / "a.html").is_file() and (tmp_path / "report" / "b.html").is_file()


def test_the_predictions_given_as_their_own_references_are_refused(tmp_path, capsys):
    images, predictions = _report_folders(tmp_path, "a")
    assert main(["report", "--images", str(images), "--predictions", str(predictions), "--labels", str(predictions),
                 "--output-dir", str(tmp_path / "report"), "--quiet"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: {predictions / 'a.nii.gz'}: is both the prediction and the label of case a (one folder given for "
        "both?); it would score perfectly against itself")
    assert not (tmp_path / "report").exists()


def test_a_case_name_reads_as_itself_in_the_plots_not_as_their_markup(tmp_path):
    """Plotly reads <b> or <a href=...> in a title as markup: a name could bold or link the surface's title."""
    images, predictions = _report_folders(tmp_path, "a<b>x")
    assert main(["report", "--images", str(images), "--predictions", str(predictions),
                 "--output-dir", str(tmp_path / "report"), "--quiet"]) == 0
    page = (tmp_path / "report" / "a<b>x.html").read_text(encoding="utf-8")
    assert '"text":"a&lt;b&gt;x: surface (drag to rotate)"' in page
    assert "\\u003cb\\u003e" not in page


def test_a_mask_replaced_since_segment_made_it_is_said_and_shown_unrecorded(tmp_path, capsys):
    """Another subject's mask copied over a case's passed without a word, its row's flag gone."""
    images, predictions = _report_folders(tmp_path, "a")
    (predictions / "a.nii.gz").unlink()
    assert main(["segment", str(images), "--output-dir", str(predictions), "--format", "nii.gz", "--quiet"]) == 0
    edited = sitk.ReadImage(str(predictions / "a.nii.gz"))
    edited[0, 0, 0] = 1
    sitk.WriteImage(edited, str(predictions / "a.nii.gz"))
    capsys.readouterr()
    assert main(["report", "--images", str(images), "--predictions", str(predictions),
                 "--output-dir", str(tmp_path / "report"), "--quiet"]) == 0
    assert capsys.readouterr().err.strip() == (
        f"warning: {predictions / 'a.nii.gz'}: is not the mask its table in {predictions} recorded (edited or replaced "
        "since segment made it): its quality flag is unknown, it is shown as not recorded")


def test_a_damaged_nrrd_mask_is_named_without_itks_object_address(tmp_path, capsys):
    """ITK's message carried its reader's address in memory: NrrdImageIO(0x55dc3fd29190)."""
    images, predictions = _report_folders(tmp_path, "a")
    (predictions / "a.nii.gz").unlink()
    mask = sitk.ReadImage(str(SAMPLE_LABEL))
    sitk.WriteImage(mask, str(predictions / "a.seg.nrrd"), useCompression=False)
    data = (predictions / "a.seg.nrrd").read_bytes()
    (predictions / "a.seg.nrrd").write_bytes(data[: len(data) // 2])
    assert main(["report", "--images", str(images), "--predictions", str(predictions),
                 "--output-dir", str(tmp_path / "report"), "--quiet"]) == 1
    [error] = capsys.readouterr().err.strip().splitlines()
    assert error.startswith(f"error: {predictions / 'a.seg.nrrd'}") and "(0x" not in error, error


def test_images_with_neither_a_mask_nor_a_row_are_noted(tmp_path, capsys):
    images, predictions = _report_folders(tmp_path, "a")
    (images / "b.nii.gz").write_bytes(SAMPLE_IMAGE.read_bytes())
    assert main(["report", "--images", str(images), "--predictions", str(predictions),
                 "--output-dir", str(tmp_path / "report"), "--quiet"]) == 0
    assert capsys.readouterr().err.strip() == (
        f"note: 1 image(s) have no mask in {predictions} and no row in its table, not reported: b")


def test_a_case_name_with_dollar_signs_is_drawn_as_written(tmp_path, capsys):
    """matplotlib read $...$ in a title as TeX: 'scan$\\frac$_2' failed its case with a parse error."""
    images, predictions = _report_folders(tmp_path, "scan$\\frac$_2")
    assert main(["report", "--images", str(images), "--predictions", str(predictions),
                 "--output-dir", str(tmp_path / "report"), "--quiet"]) == 0
    assert capsys.readouterr().err == ""
