"""Cohort runs: DICOM folders, manifests, shards and merge, and resume after a kill."""

import csv
import os
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import SAMPLE_IMAGE, besides_copies_of_one_scan

from LeftAtriumSegLib.batch import BatchSettings, collect_cases, segment_batch
from LeftAtriumSegLib.cli import main
from LeftAtriumSegLib.io import dicom_series_ids, find_cases, read_case, remove_stale_partials


def _rows(path):
    with open(path) as handle:
        return {row["case"]: row for row in csv.DictReader(handle)}


def write_dicom_series(image: sitk.Image, folder, series_uid: str) -> None:
    """Write ``image`` as one DICOM file per axial slice, with its geometry in the tags."""
    folder.mkdir(parents=True, exist_ok=True)
    image = sitk.Cast(image, sitk.sitkInt16)
    direction = image.GetDirection()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(image.GetDepth()):
        slice_image = image[:, :, k]
        tags = {
            "0008|0060": "MR",
            "0020|000d": "1.2.826.0.1.3680043.2.1125.1",
            "0020|000e": series_uid,
            "0020|0013": str(k + 1),
            "0008|0018": f"{series_uid}.{k + 1}",
            "0020|0032": "\\".join(map(str, image.TransformIndexToPhysicalPoint((0, 0, k)))),
            "0020|0037": "\\".join(map(str, (direction[0], direction[3], direction[6], direction[1], direction[4], direction[7]))),
            "0018|0050": str(image.GetSpacing()[2]),
            "0028|0030": f"{image.GetSpacing()[1]}\\{image.GetSpacing()[0]}",
        }
        for tag, value in tags.items():
            slice_image.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"{series_uid[-2:]}_{k:04d}.dcm"))
        writer.Execute(slice_image)


def test_dicom_folder_with_two_series_is_listed_then_chosen(tmp_path, sample_image):
    folder = tmp_path / "patient"
    small = sample_image[:, :, 20:60]
    write_dicom_series(small, folder, "1.2.826.0.1.3680043.2.1125.11")
    write_dicom_series(sitk.Flip(small, [True, False, False]), folder, "1.2.826.0.1.3680043.2.1125.12")
    [case] = find_cases([folder])
    assert case.case == "patient"
    with pytest.raises(Exception, match="holds 2 DICOM series.*--series"):
        read_case(case)
    [chosen] = find_cases([folder], series_uid="1.2.826.0.1.3680043.2.1125.11")
    image = read_case(chosen)
    assert image.GetSize() == small.GetSize()
    assert image.GetSpacing() == pytest.approx(small.GetSpacing(), abs=1e-4)
    assert image.GetOrigin() == pytest.approx(small.GetOrigin(), abs=1e-3)
    assert image.GetDirection() == pytest.approx(small.GetDirection(), abs=1e-5)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(sitk.Cast(small, sitk.sitkInt16)))


def _cohort(folder, count):
    folder.mkdir()
    for index in range(count):
        (folder / f"case_{index}.nii.gz").write_bytes(SAMPLE_IMAGE.read_bytes())
    return folder


def test_shards_split_a_manifest_and_merge_into_one_table(tmp_path):
    images = _cohort(tmp_path / "images", 3)
    manifest = tmp_path / "cohort.csv"
    manifest.write_text("case,image\n" + "".join(f"p{i},images/case_{i}.nii.gz\n" for i in range(3)))
    output = tmp_path / "out"
    for shard in ("1/2", "2/2"):
        assert main(["segment", "--manifest", str(manifest), "--output-dir", str(output), "--shard", shard,
                     "--format", "nii.gz", "--quiet"]) == 0
    shard_rows = [_rows(output / "volumes.shard-1-of-2.csv"), _rows(output / "volumes.shard-2-of-2.csv")]
    assert sorted(shard_rows[0]) == ["p0", "p2"] and sorted(shard_rows[1]) == ["p1"]
    assert main(["merge", str(output)]) == 0
    merged = _rows(output / "volumes.csv")
    assert sorted(merged) == ["p0", "p1", "p2"]
    assert len({row["volume_ml"] for row in merged.values()}) == 1  # the same image thrice
    assert images.exists()


def test_merge_warns_when_shards_were_segmented_with_different_settings(tmp_path, capsys):
    images = _cohort(tmp_path / "images", 2)
    output = tmp_path / "out"
    for shard, threshold in (("1/2", "0.5"), ("2/2", "0.7")):
        assert main(["segment", str(images), "--output-dir", str(output), "--shard", shard, "--threshold", threshold,
                     "--format", "nii.gz", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["merge", str(output)]) == 0
    [warning] = besides_copies_of_one_scan(capsys.readouterr().err)
    assert warning.startswith("warning: the masks were not all made alike: 1 by ")
    assert "--threshold 0.5 " in warning and "--threshold 0.7 " in warning


def test_merge_warns_when_shards_indexed_their_cases_from_different_clinical_tables(tmp_path, capsys):
    images = _cohort(tmp_path / "images", 3)
    output, clinical = tmp_path / "out", tmp_path / "clinical.csv"
    for shard, weight in (("1/2", 70), ("2/2", 80)):  # the table corrected while the second shard queued
        clinical.write_text("case,height_cm,weight_kg\n" + "".join(f"case_{i},170,{weight}\n" for i in range(3)))
        assert main(["segment", str(images), "--output-dir", str(output), "--shard", shard, "--clinical", str(clinical),
                     "--format", "nii.gz", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["merge", str(output)]) == 0
    [warning] = besides_copies_of_one_scan(capsys.readouterr().err)
    assert re.fullmatch(r"warning: the cases were measured with different --clinical tables: 2 with SHA-256 [0-9a-f]{12}"
                        r"\.\.\. \(case_0, case_2\); 1 with SHA-256 [0-9a-f]{12}\.\.\. \(case_1\); segment the cases of all "
                        r"but one again with that table \(their masks are kept and measured again; with --shard K/N, as they "
                        r"ran\), then merge", warning)
    assert len({row["lavi_ml_per_m2"] for row in _rows(output / "volumes.csv").values()}) == 2

    assert main(["segment", str(images), "--output-dir", str(output), "--shard", "1/2", "--clinical", str(clinical),
                 "--format", "nii.gz", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["merge", str(output)]) == 0
    assert besides_copies_of_one_scan(capsys.readouterr().err) == []
    assert len({row["lavi_ml_per_m2"] for row in _rows(output / "volumes.csv").values()}) == 1

    assert main(["segment", str(images), "--output-dir", str(output), "--shard", "2/2", "--format", "nii.gz",
                 "--quiet"]) == 0  # the table left out
    capsys.readouterr()
    assert main(["merge", str(output)]) == 0
    [warning] = besides_copies_of_one_scan(capsys.readouterr().err)
    assert "clinical tables: 2 with SHA-256 " in warning and "; 1 with none recorded (case_1); " in warning


def test_merge_reports_missing_shards_and_a_run_it_cannot_check_for_cases_left_out(tmp_path, capsys):
    (tmp_path / "volumes.shard-1-of-3.csv").write_text("case,status\nx,failed\n")
    assert main(["merge", str(tmp_path)]) == 1
    assert capsys.readouterr().err.splitlines() == [
        "error: shards 2, 3 of 3 have no table yet (run segment with --shard K/3 for each)",
        "warning: no cases.shards-of-3.txt here: cases a shard stopped before reaching cannot be found"]
    (tmp_path / "volumes.shard-2-of-3.csv").write_text("case,status\ny,failed\n")
    assert main(["merge", str(tmp_path)]) == 1
    assert "error: shard 3 of 3 has no table yet" in capsys.readouterr().err


def test_killed_run_leaves_no_half_written_output_and_resumes(tmp_path):
    images = _cohort(tmp_path / "images", 4)
    output = tmp_path / "out"
    command = [sys.executable, "-m", "LeftAtriumSegLib.cli", "segment", str(images), "--output-dir", str(output),
               "--format", "nii.gz", "--quiet"]
    process = subprocess.Popen(command, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while not (output / "case_0.nii.gz").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    finished = sorted(p.name for p in output.glob("case_*.nii.gz"))
    assert 1 <= len(finished) < 4, "the kill should land mid-run"
    for name in finished:  # whatever carries a final name is complete
        assert sitk.ReadImage(str(output / name)).GetSize() == sitk.ReadImage(str(SAMPLE_IMAGE)).GetSize()

    assert subprocess.run(command, timeout=300).returncode == 0
    rows = _rows(output / "volumes.csv")
    assert sorted(rows) == [f"case_{i}" for i in range(4)]
    for name in finished:
        assert rows[name.split(".")[0]]["status"] == "skipped: output exists"
    assert len({row["volume_ml"] for row in rows.values()}) == 1
    assert not list(output.glob(".partial-*"))


def test_stale_partials_of_dead_processes_are_removed_and_live_ones_kept(tmp_path):
    import socket

    host = socket.gethostname()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".partial-{host}-{dead.pid}-abc-x.nii.gz"
    live = tmp_path / f".partial-{host}-{os.getpid()}-abc-y.nii.gz"
    other_host = tmp_path / f".partial-otherhost-{dead.pid}-abc-z.nii.gz"
    for path in (stale, live, other_host):
        path.write_bytes(b"partial")
    assert remove_stale_partials(tmp_path) == [stale]
    assert live.exists() and other_host.exists()


def test_cases_segmented_at_once_give_what_one_at_a_time_gives(tmp_path, segmenter, capsys):
    """Workers share the networks; each case's row, mask and lines are its own, in the cases' order."""
    images = _cohort(tmp_path / "images", 3)
    (images / "case_1.nii.gz").write_bytes(SAMPLE_IMAGE.read_bytes()[:5000])  # fails alone
    sample = sitk.ReadImage(str(SAMPLE_IMAGE))
    sitk.WriteImage(sample[:, :, 10:60], str(images / "case_3.nii.gz"))  # another scan: another volume
    cases = collect_cases([str(images)])
    outputs = {}
    for workers in (1, 3):
        settings = BatchSettings(tmp_path / f"out_{workers}", "nii.gz", False, None)
        assert segment_batch(cases, segmenter, settings, workers=workers) == (3, 1)
        outputs[workers] = capsys.readouterr()
        rows = _rows(settings.table_path)
        assert list(rows) == ["case_0", "case_1", "case_2", "case_3"]
        assert [rows[c]["status"] for c in rows] == ["ok", "failed", "ok", "ok"]
        outputs[workers, "rows"] = {case: (row["status"], row["volume_ml"], row["qc"]) for case, row in rows.items()}
    assert outputs[1, "rows"] == outputs[3, "rows"]
    assert outputs[1, "rows"]["case_0"][1] != outputs[1, "rows"]["case_3"][1]
    for case in ("case_0", "case_2", "case_3"):
        masks = [sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / f"out_{w}" / f"{case}.nii.gz"))) for w in (1, 3)]
        np.testing.assert_array_equal(*masks)
    for workers in (1, 3):
        lines = [line for line in outputs[workers].out.splitlines() if ": left atrium " in line]
        assert [line.split(":")[0] for line in lines] == ["case_0", "case_2", "case_3"]
        assert outputs[workers].err.count("error: ") == 1 and "case_1.nii.gz" in outputs[workers].err


def test_series_listed_from_several_threads_leave_itk_warnings_on(tmp_path, sample_image):
    """GDCM's warnings are switched off while a folder's series are listed: a process-wide switch."""
    folders = []
    for index in range(4):
        folders.append(tmp_path / f"patient_{index}")
        write_dicom_series(sample_image[:, :, 20:24], folders[-1], f"1.2.826.0.1.3680043.2.1125.{20 + index}")
    assert sitk.ProcessObject.GetGlobalWarningDisplay()
    with ThreadPoolExecutor(4) as pool:
        series = list(pool.map(dicom_series_ids, folders * 10))
    assert all(len(ids) == 1 for ids in series)
    assert sitk.ProcessObject.GetGlobalWarningDisplay()


class _RunsOutOfMemoryOn:
    """The shipped segmenter, but out of memory on one case: what many scans at once may meet."""

    def __init__(self, segmenter, size):
        self.segmenter, self.size = segmenter, size
        self.config, self.model_sha256, self.cleanup = segmenter.config, segmenter.model_sha256, segmenter.cleanup

    def segment(self, image):
        if image.GetSize() == self.size:
            raise MemoryError
        return self.segmenter.segment(image)


def test_a_case_out_of_memory_fails_alone_saying_what_to_do(tmp_path, segmenter, capsys):
    images = _cohort(tmp_path / "images", 2)
    sample = sitk.ReadImage(str(SAMPLE_IMAGE))
    sitk.WriteImage(sample[:, :, 10:60], str(images / "case_1.nii.gz"))
    settings = BatchSettings(tmp_path / "out", "nii.gz", False, None)
    stub = _RunsOutOfMemoryOn(segmenter, sample[:, :, 10:60].GetSize())
    assert segment_batch(collect_cases([str(images)]), stub, settings, workers=2) == (1, 1)
    rows = _rows(settings.table_path)
    assert rows["case_0"]["status"] == "ok" and rows["case_1"]["status"] == "failed"
    assert rows["case_1"]["error"].endswith("case_1.nii.gz: out of memory (fewer scans at once: a lower --threads)")
    assert "error: " in capsys.readouterr().err


def test_merge_sees_a_slice_gone_from_a_dicom_series(tmp_path, sample_image, capsys):
    """Deleting a file changes no remaining file's times: the folder's listing is part of what merge
    compares before it hashes the series again."""
    folder, output = tmp_path / "patient", tmp_path / "out"
    write_dicom_series(sample_image, folder, "1.2.826.0.1.3680043.2.1125.31")
    assert main(["segment", str(folder), "--output-dir", str(output), "--shard", "1/1", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["merge", str(output)]) == 0 and capsys.readouterr().err == ""
    max(folder.iterdir()).unlink()
    assert main(["merge", str(output)]) == 1
    assert capsys.readouterr().err.strip() == (
        f"error: 1 case(s) whose scan has changed since its mask was made: patient ({folder}); segment them again "
        "with --overwrite")


def test_a_dicom_series_with_a_slice_missing_or_twice_is_refused(tmp_path, sample_image, capsys):
    """Read as a stack, a series without two of its slices came out 3 mL smaller and 'ok', every
    slice past the gap placed 2.7 mm off; a slice twice added one's volume."""
    import shutil

    folder = tmp_path / "patient"
    write_dicom_series(sample_image[:, :, :20], folder, "1.2.826.0.1.3680043.2.1125.41")
    files = sorted(folder.iterdir())
    missing = tmp_path / "missing"
    shutil.copytree(folder, missing)
    for name in (files[9].name, files[10].name):
        (missing / name).unlink()
    shutil.copy(files[9], folder / f"{files[9].stem}_again.dcm")
    capsys.readouterr()
    assert main(["segment", str(missing), str(folder), "--output-dir", str(tmp_path / "out"), "--quiet"]) == 1
    errors = capsys.readouterr().err.strip().splitlines()
    assert errors[0] == (f"error: {missing}: its slices lie 1.37 mm apart, but 4.11 mm between {files[8].name} and "
                         f"{files[11].name} (slices missing?): the series cannot be read as an evenly spaced volume")
    assert errors[1].startswith(f"error: {folder}: its slices lie 1.37 mm apart, but 0.00 mm between ")
    assert errors[1].endswith("(a slice twice?): the series cannot be read as an evenly spaced volume")
