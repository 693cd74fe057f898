"""A cohort run loses nothing and credits no result to the wrong scan: full disks, thin slabs,
reruns with other images, runs side by side, outputs that would replace inputs, headers that lie,
unreadable folder entries, damaged models. Each test reproduces the failure it guards against."""

import csv
import os
import struct
import subprocess
import sys
import textwrap

import pytest
import SimpleITK as sitk
from conftest import SAMPLE_IMAGE, SAMPLE_LABEL, besides_copies_of_one_scan, rewrite_safetensors

from LeftAtriumSegLib import batch
from LeftAtriumSegLib.batch import record_row
from LeftAtriumSegLib.cli import main
from LeftAtriumSegLib.errors import LeftAtriumSegError, error_line
from LeftAtriumSegLib.io import file_sha256, files_by_case, find_cases, read_manifest, read_mask, write_segmentation
from LeftAtriumSegLib.models import model_path


def _rows(folder, table="volumes.csv"):
    with open(folder / table, newline="") as handle:
        return {row["case"]: row for row in csv.DictReader(handle)}


def _segment(*arguments):
    return main(["segment", *map(str, arguments), "--format", "nii.gz", "--quiet"])


def _cohort(folder, *names):
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / f"{name}.nii.gz").write_bytes(SAMPLE_IMAGE.read_bytes())
    return folder


def test_a_full_disk_leaves_no_truncated_mask_and_names_the_file(tmp_path):
    """A writer that runs out of room (RLIMIT_FSIZE below the mask's size) may say nothing: the mask
    is read back before it takes its name, and the case fails naming its output."""
    images, output = _cohort(tmp_path / "images", "a", "b"), tmp_path / "out"
    script = textwrap.dedent(f"""
        import resource, signal, sys
        from LeftAtriumSegLib.cli import main
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit then fail with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))  # the masks need about 8 kB
        sys.exit(main(["segment", {str(images)!r}, "--output-dir", {str(output)!r}, "--format", "nii.gz", "--quiet"]))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 2 and all(line.startswith(f"error: {output / name}.nii.gz: ") for line, name in zip(errors, "ab"))
    assert sorted(p.name for p in output.iterdir()) == ["volumes.csv"]
    assert {row["status"] for row in _rows(output).values()} == {"failed"}
    # No flag or volume of a mask that is not there
    assert {(row["qc"], row["volume_ml"], row["output_sha256"]) for row in _rows(output).values()} == {("", "", "")}

    assert _segment(images, "--output-dir", output) == 0  # room again: both are made
    assert {row["status"] for row in _rows(output).values()} == {"ok"}


def test_a_slab_too_thin_for_an_atrium_fails_alone(tmp_path):
    """A 256 x 256 x 2 slab crashed the localiser (no slice for its coarse pass): exit 139 for the batch."""
    images = _cohort(tmp_path / "images", "good")
    slab = sitk.ReadImage(str(SAMPLE_IMAGE))[:, :, 30:32]
    sitk.WriteImage(slab, str(images / "slab.nii.gz"))
    assert _segment(images, "--output-dir", tmp_path / "out") == 1
    rows = _rows(tmp_path / "out")
    assert rows["good"]["status"] == "ok"
    assert rows["slab"]["status"] == "failed" and "too thin to hold a left atrium" in rows["slab"]["error"]


def test_another_image_under_a_kept_case_name_is_not_credited_with_its_mask(tmp_path, capsys):
    output = tmp_path / "out"
    first = _cohort(tmp_path / "first", "patient")
    assert _segment(first, "--output-dir", output) == 0
    kept = (output / "patient.nii.gz").read_bytes()
    second = tmp_path / "second"
    second.mkdir()
    flipped = sitk.Flip(sitk.ReadImage(str(SAMPLE_IMAGE)), [True, False, False])
    sitk.WriteImage(flipped, str(second / "patient.nii.gz"))
    capsys.readouterr()

    assert _segment(second, "--output-dir", output) == 1
    row = _rows(output)["patient"]  # still the kept mask's record: made from the first image
    assert row["status"] == "ok" and row["input_sha256"] == file_sha256(first / "patient.nii.gz")
    assert row["error"].startswith("a later run failed, this mask kept: ") and "was made from another image" in row["error"]
    assert f"error: {output / 'patient.nii.gz'}: was made from another image" in capsys.readouterr().err
    assert (output / "patient.nii.gz").read_bytes() == kept
    assert _segment(second, "--output-dir", output, "--overwrite") == 0
    assert _rows(output)["patient"]["input_sha256"] == file_sha256(second / "patient.nii.gz")


def test_a_mask_changed_after_its_run_is_not_credited(tmp_path):
    output = tmp_path / "out"
    assert _segment(SAMPLE_IMAGE, "--output-dir", output) == 0
    sitk.WriteImage(sitk.ReadImage(str(SAMPLE_LABEL)), str(output / "la_022_crop.nii.gz"))
    assert _segment(SAMPLE_IMAGE, "--output-dir", output) == 1
    assert "has changed since the run that made it" in _rows(output)["la_022_crop"]["error"]


def test_two_inputs_of_one_case_name_are_refused_before_any_work(tmp_path, capsys):
    _cohort(tmp_path / "a", "patient")
    _cohort(tmp_path / "b", "patient")
    assert _segment(tmp_path / "a", tmp_path / "b", "--output-dir", tmp_path / "out") == 2
    assert capsys.readouterr().err.startswith("error: two inputs have the case name 'patient': ")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("case", ["../escaped", "/tmp/absolute", "sub/dir", "..", "two\nlines", "tab\there", ".hidden",
                                  "c1\x85control", "right\u202eleft", "mark\u200fed"])
def test_a_manifest_case_name_that_leaves_the_output_folder_is_refused(tmp_path, capsys, case):
    _cohort(tmp_path, "image")
    manifest = tmp_path / "cohort.csv"
    manifest.write_text(f'image,case\nimage.nii.gz,"{case}"\n', encoding="utf-8")
    assert main(["segment", "--manifest", str(manifest), "--output-dir", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.startswith(f"error: {manifest}: line 2: case name {case!r} cannot name a file")
    assert not (tmp_path / "out").exists() and not (tmp_path / "escaped.seg.nrrd").exists()


@pytest.mark.parametrize("first", ["=", "+", "-", "@"])
def test_a_case_name_a_spreadsheet_would_run_as_a_formula_is_refused(tmp_path, capsys, first):
    images = _cohort(tmp_path / "images", f"{first}HYPERLINK(1)")
    assert _segment(images, "--output-dir", tmp_path / "out") == 2
    assert capsys.readouterr().err.strip() == (
        f"error: {images / (first + 'HYPERLINK(1).nii.gz')}: case name '{first}HYPERLINK(1)' starts with '{first}': "
        "a spreadsheet opening volumes.csv would run it as a formula")


def test_an_output_that_would_replace_an_input_is_refused_before_any_work(tmp_path, capsys):
    images = _cohort(tmp_path / "images", "patient")
    before = (images / "patient.nii.gz").read_bytes()
    assert _segment(images, "--output-dir", images, "--overwrite") == 2
    assert capsys.readouterr().err.strip() == (
        f"error: {images / 'patient.nii.gz'}: is an input image and would be replaced by a mask; "
        "choose another --output-dir or --format")
    assert (images / "patient.nii.gz").read_bytes() == before


def _patched_nifti(path, offset, fmt, values):
    """The sample with header bytes replaced, as a damaged or hand-made header would have them."""
    import gzip

    data = bytearray(gzip.decompress(SAMPLE_IMAGE.read_bytes()))
    struct.pack_into(fmt, data, offset, *values)
    path.write_bytes(gzip.compress(bytes(data)))
    return path


@pytest.mark.parametrize("name, offset, fmt, values, message", [
    ("zero", 80, "<3f", (0, 0, 0), "the header's voxel size (pixdim) is (0.0, 0.0, 0.0) mm"),
    ("nan", 80, "<f", (float("nan"),), "the header's voxel size (pixdim) is (nan, 1.25, 1.37) mm"),
    ("negative", 80, "<f", (-1.25,), "the header's voxel size (pixdim) is (-1.25, 1.25, 1.37) mm"),
    ("huge_sform", 280, "<f", (1e6,), "the header's sform gives a voxel size of (1000000.0, 1.25, 1.37) mm"),
    ("other_sform", 280, "<f", (2.5,), "the header states two voxel sizes, (1.25, 1.25, 1.37) mm (pixdim) and (2.5, "),
    ("nan_sform", 296, "<f", (float("nan"),), "the header's sform holds NaN or infinite values"),
    ("other_qform", 268, "<f", (93.75,), "the header states two positions of the scan (qform and sform differ, up to 50.0 mm"),
    ("no_columns", 42, "<h", (0,), "the header's dimensions (3, 0, 224, 74, 1, 1, 1, 1) are not an image's"),
])
def test_a_nifti_header_with_an_impossible_voxel_size_is_refused(tmp_path, capfd, name, offset, fmt, values, message):
    """ITK reads a zero or NaN pixdim as 1 mm, silently: a real scan was reported as 82.4 mL for 101.4.
    The error is the one line (niftilib prints its own for a bad dim, from C)."""
    image = _patched_nifti(tmp_path / f"{name}.nii.gz", offset, fmt, values)
    assert _segment(image, "--output-dir", tmp_path / "out") == 1
    assert capfd.readouterr().err.startswith(f"error: {image}: {message}")


def test_a_metaimage_with_a_negative_spacing_is_refused(tmp_path):
    image = tmp_path / "negative.mha"
    sitk.WriteImage(sitk.ReadImage(str(SAMPLE_IMAGE)), str(image))
    data = image.read_bytes()
    image.write_bytes(data.replace(b"ElementSpacing = 1.25", b"ElementSpacing = -1.25", 1))
    assert _segment(image, "--output-dir", tmp_path / "out") == 1
    assert "ElementSpacing is (-1.25" in _rows(tmp_path / "out")["negative"]["error"]


def test_a_sheared_grid_and_a_spacing_too_coarse_for_memory_fail_alone_in_one_line(tmp_path, capsys):
    """A sheared grid's voxels are not spacing-product boxes (its volume came out 4 % high, qc ok);
    20 mm voxels over 224 x 224 x 74 make a frame of 1.5e10 voxels (ITK's two-line allocation error)."""
    import numpy as np  # noqa: PLC0415

    images = _cohort(tmp_path / "images", "good")
    scan = sitk.ReadImage(str(SAMPLE_IMAGE))
    sheared = sitk.Image(scan)
    direction = np.array(scan.GetDirection()).reshape(3, 3) @ [[1, 0.3, 0], [0, 1, 0], [0, 0, 1]]
    sheared.SetDirection([float(v) for v in direction.ravel()])
    sitk.WriteImage(sheared, str(images / "sheared.mha"))
    coarse = sitk.Image(scan)
    coarse.SetSpacing((20.0, 20.0, 20.0))
    sitk.WriteImage(coarse, str(images / "coarse.nrrd"))
    capsys.readouterr()
    assert _segment(images, "--output-dir", tmp_path / "out") == 1
    errors = capsys.readouterr().err.splitlines()
    assert f"error: {images / 'sheared.mha'}: its voxel axes 1 and 2 meet at 73.3 degrees, not 90" in errors[1]
    assert errors[0].startswith(f"error: {images / 'coarse.nrrd'}: the scan spans 4480 x 4480 x 1480 mm")
    assert len(errors) == 2
    rows = _rows(tmp_path / "out")
    assert [rows[case]["status"] for case in ("coarse", "good", "sheared")] == ["failed", "ok", "failed"]
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == ["good.nii.gz", "volumes.csv"]


def test_threads_beyond_the_cores_are_capped_with_a_note(tmp_path, capsys):
    assert _segment(SAMPLE_IMAGE, "--output-dir", tmp_path / "out", "--threads", "999") == 0
    cores = len(os.sched_getaffinity(0))
    assert capsys.readouterr().err.strip() == f"note: --threads 999 capped at the {cores} cores this process may use"


def test_an_output_folder_that_takes_no_data_is_found_before_any_case(tmp_path):
    """As root a read-only folder still takes files; a file-size limit of 0 refuses every byte alike."""
    images = _cohort(tmp_path / "images", "a", "b")
    output = tmp_path / "out"
    output.mkdir()
    script = textwrap.dedent(f"""
        import resource, signal, sys
        from LeftAtriumSegLib.cli import main
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
        sys.exit(main(["segment", {str(images)!r}, "--output-dir", {str(output)!r}, "--quiet"]))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: {output}: cannot write into the output folder (File too large)"]
    assert list(output.iterdir()) == []


def test_evaluate_names_labels_without_a_prediction_and_says_so_in_its_status(tmp_path, capsys):
    predictions, labels = tmp_path / "predictions", tmp_path / "labels"
    predictions.mkdir()
    labels.mkdir()
    for case in ("scored", "unpredicted"):
        (labels / f"{case}.nii.gz").write_bytes(SAMPLE_LABEL.read_bytes())
    for case in ("scored", "unlabelled"):
        (predictions / f"{case}.nii.gz").write_bytes(SAMPLE_LABEL.read_bytes())
    assert main(["evaluate", "--predictions", str(predictions), "--labels", str(labels)]) == 1
    captured = capsys.readouterr()
    assert f"error: {labels / 'unpredicted.nii.gz'}: no prediction for case unpredicted in {predictions}" in captured.err
    assert f"note: 1 prediction(s) without a label in {labels}, not scored: unlabelled" in captured.err
    assert "1 label(s) had no prediction: left out of the mean" in captured.out


def test_merge_keeps_an_unsharded_runs_rows_and_refuses_a_case_in_two_shards(tmp_path, capsys):
    output = tmp_path / "out"
    _cohort(tmp_path / "images", "a", "b", "c")
    assert _segment(tmp_path / "images" / "a.nii.gz", "--output-dir", output) == 0  # an unsharded run first
    for shard in ("1/2", "2/2"):
        assert _segment(tmp_path / "images" / "b.nii.gz", tmp_path / "images" / "c.nii.gz", "--output-dir", output,
                        "--shard", shard) == 0
    capsys.readouterr()
    assert main(["merge", str(output)]) == 0
    assert sorted(_rows(output)) == ["a", "b", "c"]
    assert "note: kept 1 row(s) of cases in" in capsys.readouterr().err
    table = output / "volumes.csv"  # a note the user added to a sharded case's row survives merging again
    lines = table.read_text().splitlines()
    table.write_text("\n".join([lines[0] + ",reader_note", *(line + (",checked" if line.startswith("b,") else ",")
                                                             for line in lines[1:])]) + "\n")
    assert main(["merge", str(output)]) == 0 and _rows(output)["b"]["reader_note"] == "checked"

    (output / "b.nii.gz").rename(tmp_path / "b_elsewhere.nii.gz")
    (output / "c.nii.gz").write_bytes(SAMPLE_LABEL.read_bytes())  # another mask under c's name
    assert main(["merge", str(output)]) == 1
    assert capsys.readouterr().err.splitlines()[-1] == ("error: 2 case(s) whose mask is gone or no longer the one its "
                                                      "row measured: b, c; segment them again (--overwrite where a "
                                                      "changed mask is to be replaced)")
    (tmp_path / "b_elsewhere.nii.gz").rename(output / "b.nii.gz")

    with open(output / "volumes.shard-1-of-2.csv", "a") as handle:  # c again, from another run's table
        handle.write(open(output / "volumes.shard-2-of-2.csv").read().splitlines()[1] + "\n")
    assert main(["merge", str(output)]) == 2
    assert "case 'c' has rows in volumes.shard-1-of-2.csv and volumes.shard-2-of-2.csv" in capsys.readouterr().err


def test_an_error_line_keeps_the_spaces_of_the_path_it_names():
    path = "/data/my  scans/la_003.nii.gz"
    assert error_line(FileNotFoundError(f"{path}: file not found"), path) == f"{path}: file not found"
    assert error_line(RuntimeError("ITK: x.hxx:179:\nFailed to allocate.\n"), path) == f"{path}: ITK: x.hxx:179: Failed to allocate."


def test_hidden_files_in_a_folder_are_not_cases(tmp_path):
    """macOS copies leave ``._NAME`` metadata files beside the scans (and the masks)."""
    images = _cohort(tmp_path / "images", "good")
    (images / "._good.nii.gz").write_bytes(b"\x00\x05\x16\x07 AppleDouble metadata")
    assert _segment(images, "--output-dir", tmp_path / "out") == 0
    assert list(_rows(tmp_path / "out")) == ["good"]
    assert list(files_by_case(images)) == ["good"]


def test_merge_names_the_cases_a_shard_stopped_before(tmp_path, capsys):
    """A job-array task killed at its time limit leaves a shard table short of its share."""
    images, output = _cohort(tmp_path / "images", "a", "b", "c"), tmp_path / "out"
    for shard in ("1/2", "2/2"):
        assert _segment(images, "--output-dir", output, "--shard", shard) == 0
    assert (output / "cases.shards-of-2.txt").read_text() == "a\nb\nc\n"
    table = output / "volumes.shard-1-of-2.csv"  # shard 1 has a and c: as if stopped after a
    table.write_text("".join(line for line in table.read_text().splitlines(keepends=True) if not line.startswith("c,")))
    (output / "c.nii.gz").unlink()
    capsys.readouterr()
    assert main(["merge", str(output)]) == 1
    assert capsys.readouterr().err.splitlines()[-1] == (
        "error: 1 case(s) of the run have no row in their shard's table: c (a shard stopped before its end? run it "
        "again: it goes on where it stopped)")
    assert _segment(images, "--output-dir", output, "--shard", "1/2") == 0
    assert main(["merge", str(output)]) == 0 and sorted(_rows(output)) == ["a", "b", "c"]


def test_merge_names_the_cases_whose_scan_changed_after_their_shard_ran(tmp_path, capsys):
    """Scans re-exported under the same names, then only one shard run again with --overwrite: the
    other shard's rows still measure the earlier images, and the case list cannot tell."""
    images, output = _cohort(tmp_path / "images", "a", "b"), tmp_path / "out"
    for shard in ("1/2", "2/2"):
        assert _segment(images, "--output-dir", output, "--shard", shard) == 0
    capsys.readouterr()
    assert main(["merge", str(output)]) == 0 and besides_copies_of_one_scan(capsys.readouterr().err) == []
    re_exported = sitk.ReadImage(str(SAMPLE_IMAGE))[:, :, 2:]  # other voxels, the atrium still in them
    for name in ("a", "b"):
        sitk.WriteImage(re_exported, str(images / f"{name}.nii.gz"))
    assert _segment(images, "--output-dir", output, "--shard", "2/2", "--overwrite") == 0  # b again
    capsys.readouterr()
    assert main(["merge", str(output)]) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"error: 1 case(s) whose scan has changed since its mask was made: a ({images / 'a.nii.gz'}); segment them "
        "again with --overwrite"]
    assert _segment(images, "--output-dir", output, "--shard", "1/2", "--overwrite") == 0
    assert main(["merge", str(output)]) == 0


def test_merge_sees_a_changed_scan_through_a_copied_folder_and_a_link_pointed_elsewhere(tmp_path, capsys):
    """A copy of the output folder has masks newer than any scan; a link pointed at another scan
    keeps the time of the file it points at: neither is a scan written after its mask."""
    images, output = _cohort(tmp_path / "images", "a"), tmp_path / "out"
    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / "b.nii.gz").symlink_to(images / "a.nii.gz")
    assert _segment(images / "a.nii.gz", linked / "b.nii.gz", "--output-dir", output, "--shard", "1/1") == 0
    sitk.WriteImage(sitk.ReadImage(str(SAMPLE_IMAGE))[:, :, 2:], str(tmp_path / "other.nii.gz"))
    os.utime(tmp_path / "other.nii.gz", ns=(1, 1))  # copied with its times kept (cp -p): older than any mask
    (linked / "b.nii.gz").unlink()
    (linked / "b.nii.gz").symlink_to(tmp_path / "other.nii.gz")
    sitk.WriteImage(sitk.ReadImage(str(SAMPLE_IMAGE))[:, :, 2:], str(images / "a.nii.gz"))
    copy = tmp_path / "copy of out"
    import shutil

    shutil.copytree(output, copy, copy_function=shutil.copy)  # new times for the masks, as cp -r gives
    capsys.readouterr()
    assert main(["merge", str(copy)]) == 1
    assert {row["output"] for row in _rows(copy).values()} == {str(copy / "a.nii.gz"), str(copy / "b.nii.gz")}
    assert besides_copies_of_one_scan(capsys.readouterr().err) == [
        f"error: 2 case(s) whose scan has changed since its mask was made: a ({images / 'a.nii.gz'}), b "
        f"({linked / 'b.nii.gz'}); segment them again with --overwrite"]
    os.utime(images / "a.nii.gz")  # touched: the same bytes, hashed again, said nothing of
    for name in ("a", "b"):
        (copy / f"{name}.nii.gz").unlink()
    assert _segment(images / "a.nii.gz", linked / "b.nii.gz", "--output-dir", copy, "--shard", "1/1") == 0
    os.utime(images / "a.nii.gz")
    capsys.readouterr()
    assert main(["merge", str(copy)]) == 0 and besides_copies_of_one_scan(capsys.readouterr().err) == []


def test_merge_reads_a_scan_only_when_its_fingerprint_differs_and_once_found_the_same(tmp_path, monkeypatch):
    """Hashing every scan of a cohort at each merge would read terabytes to find them unchanged."""
    from pathlib import Path

    images, output = _cohort(tmp_path / "images", "a"), tmp_path / "out"
    assert _segment(images, "--output-dir", output, "--shard", "1/1") == 0
    hashed, hash_file = [], batch.file_sha256

    def counting(path):
        if Path(path).parent == images:
            hashed.append(Path(path).name)
        return hash_file(path)

    monkeypatch.setattr(batch, "file_sha256", counting)
    assert main(["merge", str(output)]) == 0 and hashed == []
    os.utime(images / "a.nii.gz")  # touched: another fingerprint, the same bytes
    assert main(["merge", str(output)]) == 0 and hashed == ["a.nii.gz"]
    assert main(["merge", str(output)]) == 0 and hashed == ["a.nii.gz"]  # the new fingerprint was kept


def test_a_shard_given_other_inputs_than_the_shards_before_is_refused(tmp_path, capsys):
    """Its share would be taken from another list: cases would fall in no shard's share."""
    images, output = _cohort(tmp_path / "images", "a", "b"), tmp_path / "out"
    assert _segment(images, "--output-dir", output, "--shard", "1/2") == 0
    _cohort(images, "new")
    capsys.readouterr()
    assert _segment(images, "--output-dir", output, "--shard", "2/2") == 2
    assert capsys.readouterr().err.strip() == (
        f"error: {output / 'cases.shards-of-2.txt'}: the shards that ran before had other cases (new now: new). Give "
        "every shard of a run the same inputs; for a new run, use another --output-dir, or merge the earlier run and "
        "move its shard tables and this list away (volumes.csv then credits its masks)")
    assert not (output / "volumes.shard-2-of-2.csv").exists()

    # As the message says: the earlier run merged, its tables and list moved away, a new run goes.
    assert _segment(images / "a.nii.gz", images / "b.nii.gz", "--output-dir", output, "--shard", "2/2") == 0
    assert main(["merge", str(output)]) == 0
    earlier = tmp_path / "earlier run"
    earlier.mkdir()
    for name in ("volumes.shard-1-of-2.csv", "volumes.shard-2-of-2.csv", "cases.shards-of-2.txt"):
        (output / name).rename(earlier / name)
    for shard in ("1/2", "2/2"):
        assert _segment(images, "--output-dir", output, "--shard", shard) == 0
    capsys.readouterr()
    assert main(["merge", str(output)]) == 0 and besides_copies_of_one_scan(capsys.readouterr().err) == []
    rows = _rows(output)
    assert [rows[case]["status"] for case in ("a", "b", "new")] == ["skipped: output exists"] * 2 + ["ok"]


def test_unreadable_entries_of_an_input_folder_get_a_row_with_the_reason(tmp_path):
    images = _cohort(tmp_path / "images", "good")
    (images / "dangling.nii.gz").symlink_to(tmp_path / "gone.nii.gz")
    (images / "loop.nii.gz").symlink_to(images / "loop.nii.gz")
    assert _segment(images, "--output-dir", tmp_path / "out") == 1
    rows = _rows(tmp_path / "out")
    assert rows["good"]["status"] == "ok"
    assert rows["dangling"]["error"] == f"{images / 'dangling.nii.gz'}: dangling symbolic link (to {tmp_path / 'gone.nii.gz'}, which does not exist)"
    assert rows["loop"]["error"] == f"{images / 'loop.nii.gz'}: symbolic link loop"


def test_a_model_with_nan_weights_is_refused_before_any_case(tmp_path, capsys):
    damaged = tmp_path / "damaged.safetensors"
    damaged.write_bytes(model_path().read_bytes())
    rewrite_safetensors(damaged, lambda metadata, tensors: tensors["axial.head.bias"].fill_(float("nan")))
    assert _segment(SAMPLE_IMAGE, "--output-dir", tmp_path / "out", "--model", damaged) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: {damaged}: damaged model: tensor 'axial.head.bias' holds NaN or infinite weights")
    assert not (tmp_path / "out").exists()


def test_runs_side_by_side_into_one_folder_lose_no_row(tmp_path):
    output = tmp_path / "out"
    first, second = _cohort(tmp_path / "first", "a1", "a2"), _cohort(tmp_path / "second", "b1", "b2")
    command = [sys.executable, "-m", "LeftAtriumSegLib.cli", "segment", "--output-dir", str(output), "--format", "nii.gz",
               "--quiet", "--threads", "1"]
    runs = [subprocess.Popen([*command, str(folder)], stderr=subprocess.PIPE, text=True) for folder in (first, second)]
    assert [run.wait(timeout=300) for run in runs] == [0, 0], [run.stderr.read() for run in runs]
    assert sorted(_rows(output)) == ["a1", "a2", "b1", "b2"]
    assert {row["status"] for row in _rows(output).values()} == {"ok"}


def test_a_failed_row_does_not_erase_the_record_of_a_mask_still_in_place(tmp_path):
    """A run against an unmounted share, with a wrong manifest, or out of disk fails its cases: the
    masks already made keep their records (the failure noted), else no later run could credit them."""
    output = tmp_path / "out"
    assert _segment(SAMPLE_IMAGE, "--output-dir", output) == 0
    done = _rows(output)["la_022_crop"]
    record_row(output / "volumes.csv", {**done, "status": "failed", "error": "file not found", "output": ""})
    kept = _rows(output)["la_022_crop"]
    assert kept["status"] == "ok" and kept["output_sha256"] == done["output_sha256"]
    assert kept["error"] == "a later run failed, this mask kept: file not found"
    assert _segment(SAMPLE_IMAGE, "--output-dir", output) == 0  # still credited
    (output / "la_022_crop.nii.gz").unlink()  # the mask gone, the failure is the record
    record_row(output / "volumes.csv", {**done, "status": "failed", "error": "file not found", "output": ""})
    assert _rows(output)["la_022_crop"]["status"] == "failed"


def test_each_row_records_the_digests_of_its_image_and_mask(tmp_path):
    assert _segment(SAMPLE_IMAGE, "--output-dir", tmp_path / "out") == 0
    row = _rows(tmp_path / "out")["la_022_crop"]
    assert row["input_sha256"] == file_sha256(SAMPLE_IMAGE)
    assert row["output_sha256"] == file_sha256(tmp_path / "out" / "la_022_crop.nii.gz")


def test_a_segmentation_written_at_another_time_is_the_same_file(tmp_path, monkeypatch):
    import datetime  # noqa: PLC0415

    import nrrd.writer  # noqa: PLC0415

    class Later(datetime.datetime):
        @classmethod
        def utcnow(cls):
            return datetime.datetime(2031, 1, 2, 3, 4, 5)

    reference = sitk.ReadImage(str(SAMPLE_LABEL))
    mask = sitk.GetArrayFromImage(reference) > 0
    write_segmentation(mask, reference, tmp_path / "now.seg.nrrd")
    monkeypatch.setattr(nrrd.writer, "datetime", Later)  # the clock pynrrd reads
    write_segmentation(mask, reference, tmp_path / "later.seg.nrrd")
    assert (tmp_path / "now.seg.nrrd").read_bytes() == (tmp_path / "later.seg.nrrd").read_bytes()
    assert b"(GMT)" not in (tmp_path / "later.seg.nrrd").read_bytes()[:1000]  # had pynrrd read another clock
    assert (sitk.GetArrayFromImage(read_mask(tmp_path / "later.seg.nrrd")) > 0).sum() == mask.sum()


def test_a_nifti_with_a_corrupted_byte_is_refused_not_read_as_other_voxels(tmp_path):
    """ITK reads a .nii.gz whose compressed stream has a flipped byte without a word (here 2.8 million
    voxels changed); the stream's checksum, read through once, finds it."""
    data = bytearray(SAMPLE_IMAGE.read_bytes())
    data[len(data) // 2] ^= 0xFF
    corrupted = tmp_path / "corrupted.nii.gz"
    corrupted.write_bytes(bytes(data))
    assert _segment(corrupted, "--output-dir", tmp_path / "out") == 1
    assert "file is truncated, corrupt or not gzip-compressed" in _rows(tmp_path / "out")["corrupted"]["error"]


def test_a_mask_another_run_placed_meanwhile_is_not_replaced(tmp_path, monkeypatch, capsys):
    """Two runs of one case at once (a resubmitted array job): the second to finish finds the first's
    mask at commit, under the folder's lock, and leaves it."""
    output = tmp_path / "out"
    name, write_label_map = batch.OUTPUT_WRITERS["nii.gz"]

    def written_meanwhile(mask, image, path, overwrite, commit):
        def other_run_first(written):  # the other run's mask took its name after this one began writing
            path.write_bytes(b"the other run's mask")
            commit(written)
        write_label_map(mask, image, path, overwrite=overwrite, commit=other_run_first)

    monkeypatch.setitem(batch.OUTPUT_WRITERS, "nii.gz", (name, written_meanwhile))
    assert _segment(SAMPLE_IMAGE, "--output-dir", output) == 1
    assert (output / "la_022_crop.nii.gz").read_bytes() == b"the other run's mask"
    assert "another run made this case's mask while this one worked on it; run again (without --overwrite)" in (
        capsys.readouterr().err)
    assert sorted(p.name for p in output.iterdir()) == ["la_022_crop.nii.gz", "volumes.csv"]


def test_a_manifest_or_clinical_table_given_through_a_pipe_is_read(tmp_path):
    """``--manifest <(make_manifest)``: the file is neither a regular file nor one to read twice."""
    import threading  # noqa: PLC0415

    pipe = tmp_path / "manifest"
    os.mkfifo(pipe)
    writer = threading.Thread(target=lambda: pipe.write_text(f"image,case\n{SAMPLE_IMAGE},P1\n"), daemon=True)
    writer.start()
    [case] = read_manifest(pipe)
    writer.join()
    assert (case.case, case.path) == ("P1", SAMPLE_IMAGE.resolve())
    writer = threading.Thread(target=lambda: pipe.write_text("case,height_cm,weight_kg\nP1,180,80\n"), daemon=True)
    writer.start()
    assert batch.read_clinical(str(pipe)) == {"P1": (180.0, 80.0)}  # --clinical <(...)
    writer.join()


def test_tables_saved_by_a_spreadsheet_are_read(tmp_path):
    """Excel's "CSV UTF-8" starts with a byte-order mark, which made the first column 'ufeffimage'."""
    _cohort(tmp_path, "image")
    manifest, clinical = tmp_path / "cohort.csv", tmp_path / "clinical.csv"
    manifest.write_text("\ufeffimage,case\nimage.nii.gz,patient\n", encoding="utf-8")
    clinical.write_text("\ufeffcase,height_cm,weight_kg\npatient,170,70\n", encoding="utf-8")
    assert main(["segment", "--manifest", str(manifest), "--clinical", str(clinical), "--output-dir",
                 str(tmp_path / "out"), "--quiet"]) == 0
    assert float(_rows(tmp_path / "out")["patient"]["bsa_m2"]) == pytest.approx(1.81, abs=0.01)

    # Saved in a language that writes decimal commas: semicolons between cells (and the header's
    # names typed with spaces); the results table too, which the next run reads and writes back.
    manifest.write_text("\ufeff image ;case\r\nimage.nii.gz;patient\r\n", encoding="utf-8")
    clinical.write_text("\r\ncase;height_cm;weight_kg\r\npatient;180;80\r\n", encoding="utf-8")  # a blank line first
    table = tmp_path / "out" / "volumes.csv"
    table.write_text(table.read_text().replace(",", ";") + ";;;;\r\n")  # and a row of empty cells
    assert main(["segment", "--manifest", str(manifest), "--clinical", str(clinical), "--output-dir",
                 str(tmp_path / "out"), "--quiet"]) == 0
    assert _rows(tmp_path / "out")["patient"]["bsa_m2"] == "2.000"  # sqrt(180 x 80 / 3600)


@pytest.mark.parametrize("contents, message", [
    ("case,height_cm,weight_kg\nla_022_crop,170,70\n\nla_022_crop,180,90\n", "case la_022_crop has two rows, lines 2 and 4"),
    ("case,height_cm,weight_kg\n", "lists no case (a header row and nothing under it)"),
    ("case,height_cm,weight_kg,height_cm\nla_022_crop,170,70,180\n", "the header names the column 'height_cm' twice; which is meant?"),
])
def test_a_clinical_table_that_cannot_be_read_one_way_is_refused(tmp_path, capsys, contents, message):
    clinical = tmp_path / "clinical.csv"
    clinical.write_text(contents)
    assert _segment(SAMPLE_IMAGE, "--clinical", clinical, "--output-dir", tmp_path / "out") == 2
    assert capsys.readouterr().err.strip() == f"error: {clinical}: {message}"


def test_a_case_name_too_long_for_a_file_name_is_refused_before_any_work(tmp_path, capsys):
    _cohort(tmp_path, "image")
    manifest = tmp_path / "cohort.csv"
    manifest.write_text(f"image,case\nimage.nii.gz,{'x' * 200}\n")
    assert main(["segment", "--manifest", str(manifest), "--output-dir", str(tmp_path / "out")]) == 2
    assert "is 200 bytes long; output files need it under 151" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_table_edited_out_of_shape_stops_the_run_and_added_columns_are_kept(tmp_path, capsys):
    output = tmp_path / "out"
    _cohort(tmp_path / "images", "a", "b")
    assert _segment(tmp_path / "images" / "a.nii.gz", "--output-dir", output) == 0
    table = output / "volumes.csv"
    lines = table.read_text().splitlines()
    table.write_text(f"{lines[0]},reader_note\n{lines[1]},checked by JS\n")
    assert _segment(tmp_path / "images" / "b.nii.gz", "--output-dir", output) == 0
    assert _rows(output)["a"]["reader_note"] == "checked by JS" and _rows(output)["b"]["status"] == "ok"
    assert _segment(tmp_path / "images", "--output-dir", output) == 0  # a credited again, its row written anew
    assert _segment(tmp_path / "images" / "a.nii.gz", "--output-dir", output, "--overwrite") == 0
    assert _rows(output)["a"]["reader_note"] == "checked by JS" and _rows(output)["a"]["status"] == "ok"

    lines = table.read_text().splitlines(keepends=True)
    table.write_text("".join([lines[0], ",a note on a line of its own\n", *lines[1:]]))  # an Enter too many in a cell
    capsys.readouterr()
    assert _segment(tmp_path / "images", "--output-dir", output) == 2
    assert capsys.readouterr().err.strip() == (f"error: {table}: line 2 names no case (edited by hand?); "
                                               "restore it or move the table away")
    table.write_text("".join(lines))

    table.write_text(table.read_text().replace("status,", "state,", 1))
    capsys.readouterr()
    assert _segment(tmp_path / "images", "--output-dir", output) == 2
    assert capsys.readouterr().err.strip() == (f"error: {table}: has no status column (edited by hand?); "
                                               "restore it or move the table away")


def test_a_scan_named_with_a_stray_space_is_segmented_under_its_name_without_it(tmp_path):
    images = _cohort(tmp_path / "images", "good")
    (images / " spaced .nii.gz").write_bytes(SAMPLE_IMAGE.read_bytes())
    assert _segment(images, "--output-dir", tmp_path / "out") == 0
    rows = _rows(tmp_path / "out")
    assert sorted(rows) == ["good", "spaced"] and rows["spaced"]["input"].endswith(" spaced .nii.gz")
    assert (tmp_path / "out" / "spaced.nii.gz").is_file()
    assert files_by_case(images).keys() == files_by_case(tmp_path / "out").keys()  # evaluate and report pair them


def test_a_shard_without_cases_still_leaves_its_table_for_merge(tmp_path, capsys):
    output = tmp_path / "out"
    for shard in ("1/2", "2/2"):
        assert _segment(SAMPLE_IMAGE, "--output-dir", output, "--shard", shard) == 0
    assert (output / "volumes.shard-2-of-2.csv").read_text().startswith("case,")
    assert main(["merge", str(output)]) == 0
    assert list(_rows(output)) == ["la_022_crop"] and "missing" not in capsys.readouterr().err


def test_merge_keeps_a_row_whose_mask_is_newer_than_its_shards(tmp_path, capsys):
    """A case segmented again, unsharded, after the shards ran: its mask is the new one."""
    output = tmp_path / "out"
    assert _segment(SAMPLE_IMAGE, "--output-dir", output, "--shard", "1/1") == 0
    assert _segment(SAMPLE_IMAGE, "--output-dir", output, "--threshold", "0.7", "--overwrite") == 0
    capsys.readouterr()
    assert main(["merge", str(output)]) == 0
    row = _rows(output)["la_022_crop"]
    assert "--threshold 0.7 " in row["cleanup_options"]
    assert row["output_sha256"] == file_sha256(output / "la_022_crop.nii.gz")
    assert "whose masks are newer than their shard's rows" in capsys.readouterr().err


def test_measuring_a_sharded_case_again_without_its_shard_says_merge_keeps_the_shards_row(tmp_path, capsys):
    """A height corrected after the shards ran, the case measured again unsharded (its mask kept):
    merge would keep the shard's row, so segment says so then, and how to measure it for the merge."""
    output, clinical = tmp_path / "out", tmp_path / "clinical.csv"
    clinical.write_text("case,height_cm,weight_kg\nla_022_crop,170,70\n")
    assert _segment(SAMPLE_IMAGE, "--output-dir", output, "--shard", "1/1") == 0
    assert main(["merge", str(output)]) == 0
    capsys.readouterr()
    assert _segment(SAMPLE_IMAGE, "--output-dir", output, "--clinical", clinical) == 0
    assert capsys.readouterr().err.strip() == (
        f"warning: 1 case(s) measured again here are recorded otherwise, with the same mask, in the shard tables of "
        f"{output} (la_022_crop): merge keeps the shards' rows; to merge these measurements, run those shards again "
        "with these options (--shard K/N; their masks are kept and measured again)")
    assert main(["merge", str(output)]) == 0
    assert not _rows(output)["la_022_crop"]["bsa_m2"]  # as said

    assert _segment(SAMPLE_IMAGE, "--output-dir", output, "--shard", "1/1", "--clinical", clinical) == 0
    assert main(["merge", str(output)]) == 0
    assert _rows(output)["la_022_crop"]["bsa_m2"]
    capsys.readouterr()
    # Measured again alike (the merged table's row is the shard's): nothing to say.
    assert _segment(SAMPLE_IMAGE, "--output-dir", output, "--clinical", clinical) == 0
    assert "shard tables" not in capsys.readouterr().err


@pytest.mark.parametrize("signals", [("SIGTERM",), ("SIGINT", "SIGINT")], ids=["sigterm", "ctrl-c-twice"])
def test_terminated_runs_leave_no_partial_output(tmp_path, signals):
    """SLURM sends SIGTERM at a job's time limit: it ends a run as Ctrl-C does, temporary files
    removed, and every case it finished said on standard output. A second Ctrl-C while the case
    under way finishes (``timeout`` too may signal twice) changes nothing: it aborted the process."""
    import signal
    import time

    images, output = _cohort(tmp_path / "images", *(f"case{i}" for i in range(6))), tmp_path / "out"
    # A shell's background job (CI's, say) ignores SIGINT, and so would the run: the child takes
    # Python's own handler back.
    child = textwrap.dedent(f"""
        import signal, sys
        signal.signal(signal.SIGINT, signal.default_int_handler)
        from LeftAtriumSegLib.cli import main
        sys.exit(main(["segment", {str(images)!r}, "--output-dir", {str(output)!r}, "--format", "nii.gz", "--threads", "1"]))
    """)
    run = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           encoding="utf-8")  # the progress bar's blocks
    deadline = time.monotonic() + 240
    while not (output / "case0.nii.gz").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # case1 under way (a case takes about a second)
    for name in signals:
        run.send_signal(getattr(signal, name))
        time.sleep(0.05)
    stdout, stderr = run.communicate(timeout=60)
    assert run.returncode == 130
    assert stderr.strip().endswith("interrupted: the same command goes on where it stopped (masks made are kept)")
    assert "interrupted: finishing the scans under way, starting no other" in stderr
    made = sorted(p.name for p in output.iterdir())
    assert made[-1] == "volumes.csv" and all(name.endswith(".nii.gz") for name in made[:-1])
    rows = _rows(output)
    assert {f"{case}.nii.gz" for case, row in rows.items() if row["status"] == "ok"} == set(made[:-1])
    said = [line.split(":")[0] for line in stdout.splitlines() if ": left atrium " in line]
    assert said == sorted(case for case, row in rows.items() if row["status"] == "ok")
    assert said[:2] == ["case0", "case1"]  # case1 was under way: finished, not left behind


def test_segmentations_in_an_input_folder_are_not_taken_for_scans(tmp_path):
    images = _cohort(tmp_path / "images", "patient")
    assert main(["segment", str(images), "--output-dir", str(images), "--quiet"]) == 0  # .seg.nrrd beside the scans
    assert [case.case for case in find_cases([images])] == ["patient"]


def test_a_folder_with_two_files_of_one_case_is_refused(tmp_path):
    masks = tmp_path / "masks"
    masks.mkdir()
    for name in ("patient.nii.gz", "patient.nrrd"):
        sitk.WriteImage(sitk.ReadImage(str(SAMPLE_LABEL)), str(masks / name))
    with pytest.raises(LeftAtriumSegError, match="two files of case patient: patient.nii.gz and patient.nrrd"):
        files_by_case(masks)


def test_a_segmentation_with_overlapping_layers_is_refused_as_a_mask(tmp_path):
    label = sitk.ReadImage(str(SAMPLE_LABEL))
    layered = sitk.Compose(label, label)  # how SimpleITK reads a .seg.nrrd with two layers
    sitk.WriteImage(layered, str(tmp_path / "layered.seg.nrrd"))
    with pytest.raises(LeftAtriumSegError, match="is a segmentation with several layers"):
        read_mask(tmp_path / "layered.seg.nrrd")


def test_a_manifest_row_with_a_link_loop_fails_alone_and_a_nul_is_named(tmp_path, capsys):
    images = _cohort(tmp_path / "images", "good")
    (images / "loop_a.nii.gz").symlink_to(images / "loop_b.nii.gz")
    (images / "loop_b.nii.gz").symlink_to(images / "loop_a.nii.gz")
    manifest = tmp_path / "cohort.csv"
    manifest.write_text("image\nimages/loop_a.nii.gz\nimages/good.nii.gz\n")
    assert _segment("--manifest", manifest, "--output-dir", tmp_path / "out") == 1
    rows = _rows(tmp_path / "out")
    assert rows["good"]["status"] == "ok"
    assert rows["loop_a"]["status"] == "failed" and "symbolic link loop" in rows["loop_a"]["error"]

    manifest.write_text("image\nimages/go\0od.nii.gz\n")
    capsys.readouterr()
    assert _segment("--manifest", manifest, "--output-dir", tmp_path / "out") == 2
    assert capsys.readouterr().err.strip() == f"error: {manifest}: line 2: the image's name holds a NUL character"


def test_a_manifest_names_a_linked_scan_as_its_link_as_a_folder_does(tmp_path):
    """Named after the link's target, the case took another subject's height and weight."""
    cohort = tmp_path / "cohort"
    cohort.mkdir()
    (cohort / "subject_a.nii.gz").symlink_to(SAMPLE_IMAGE)
    (tmp_path / "cohort.csv").write_text("image\ncohort/subject_a.nii.gz\n")
    from_manifest, = read_manifest(tmp_path / "cohort.csv")
    from_folder, = find_cases([str(cohort)])
    assert from_manifest.case == from_folder.case == "subject_a"
    assert from_manifest.path == cohort.absolute() / "subject_a.nii.gz"  # the table's input is the link


def test_merge_reads_a_short_row_as_blanks_and_names_a_shard_table_misnamed(tmp_path, capsys):
    output = tmp_path / "out"
    output.mkdir()
    shard = output / "volumes.shard-1-of-1.csv"
    shard.write_text("case,status,volume_ml\nb,ok,70\na,ok\n")  # a row cut short by hand
    assert main(["merge", str(output)]) == 1  # no masks there either
    assert "error: 2 case(s) whose mask is gone" in capsys.readouterr().err
    rows = _rows(output)
    assert list(rows) == ["a", "b"] and rows["a"]["volume_ml"] == "" and rows["b"]["volume_ml"] == "70"
    (output / "volumes.csv").unlink()
    misnamed = output / "volumes.shard-x-of-2.csv"
    misnamed.write_text("case,status\na,ok\n")
    assert main(["merge", str(output)]) == 2
    assert capsys.readouterr().err.strip().startswith(f"error: {misnamed}: not a shard table's name")
    assert not (output / "volumes.csv").exists()
    for path, problem in ((tmp_path / "nowhere", "not found"), (misnamed, "not a folder")):
        assert main(["merge", str(path)]) == 2
        assert capsys.readouterr().err.strip() == f"error: {path}: {problem}"


def test_a_case_segmented_in_the_other_format_is_not_given_a_second_mask(tmp_path, capsys):
    output = tmp_path / "out"
    assert _segment(SAMPLE_IMAGE, "--output-dir", output) == 0  # nii.gz
    capsys.readouterr()
    for again in ([], ["--overwrite"]):
        assert main(["segment", str(SAMPLE_IMAGE), "--output-dir", str(output), "--quiet", *again]) == 1
        assert capsys.readouterr().err.strip() == (
            f"error: {output / 'la_022_crop.nii.gz'}: this case's mask is already there as nii.gz; use --format nii.gz, "
            "or move that mask away to segment it as seg.nrrd")
    assert sorted(p.name for p in output.iterdir()) == ["la_022_crop.nii.gz", "volumes.csv"]
    row = _rows(output)["la_022_crop"]  # still the record of the mask in place
    assert row["output_sha256"] == file_sha256(output / "la_022_crop.nii.gz") and "a later run failed" in row["error"]
    assert main(["evaluate", "--predictions", str(output), "--labels", str(SAMPLE_LABEL.parent),
                 "--output", str(tmp_path / "scores.csv")]) in (0, 1)


def test_a_copied_folder_judges_its_own_masks(tmp_path, capsys):
    import shutil

    first, copy = tmp_path / "first", tmp_path / "copy"
    assert _segment(SAMPLE_IMAGE, "--output-dir", first) == 0
    shutil.copytree(first, copy)  # its table names the masks of the folder it was copied from
    with open(copy / "la_022_crop.nii.gz", "ab") as mask:
        mask.write(b"\n")
    capsys.readouterr()
    assert _segment(SAMPLE_IMAGE, "--output-dir", copy) == 1
    assert "has changed since the run that made it" in capsys.readouterr().err
    assert _rows(copy)["la_022_crop"]["status"] == "failed"  # not kept as done on the strength of the original
    assert _rows(first)["la_022_crop"]["status"] == "ok"
