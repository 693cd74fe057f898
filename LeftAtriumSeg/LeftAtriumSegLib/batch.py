"""The batch stage: from the user's inputs to one checked result per case, in ``volumes.csv``.

``segment`` runs it (``cli.py`` only parses the arguments); ``merge`` and ``report`` read its
tables back. Each row records what made its mask: the SHA-256 of the input image, of the model
file and of the mask file itself, the cleanup options and the package version. A mask found in
place from an earlier run is credited to a case only where a table of the output folder records
that it was made from that very image; otherwise the case fails with a line saying why, and
``--overwrite`` segments it again.

Runs that share an output folder (two at once, or the shards of a job array) take turns at its
tables under a lock, each re-reading the table before it writes its row, so no row is lost.
"""

from __future__ import annotations

import csv
import os
import re
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import SimpleITK as sitk
from tqdm import tqdm

from . import __version__
from .errors import LeftAtriumSegError, error_line, some_names
from .io import (
    SEGMENTATION_SUFFIX,
    CaseInput,
    IMAGE_SUFFIXES,
    atomic_output,
    case_sha256,
    check_case_name,
    create_output_folder,
    dicom_series_ids,
    file_sha256,
    find_cases,
    locked,
    place_output,
    read_case,
    read_csv,
    read_manifest,
    read_mask,
    refuse_existing_output,
    remove_stale_partials,
    scan_fingerprint,
    write_label_map,
    write_segmentation,
)
from .measurements import LAVI_DECIMALS, body_surface_area_m2, measure_atrium
from .quality import reason_counts

if TYPE_CHECKING:
    from .pipeline import Segmenter

# What made a row's mask: enough to make it again, to tell that two masks were made alike, and to
# tell which scan a mask belongs to.
PROVENANCE_COLUMNS = ("model", "model_sha256", "leftatriumseg_version", "cleanup_options", "input_sha256",
                      "output_sha256")
VOLUME_COLUMNS = ("case", "input", "output", "status", "error", "qc", "qc_reasons", "voxel_count", "volume_mm3",
                  "volume_ml", "spacing_mm", "bsa_m2", "lavi_ml_per_m2", "lavi_grade", "clinical_sha256",
                  *PROVENANCE_COLUMNS, "input_fingerprint")
# What a row says of its mask beyond the mask itself: two rows of one mask that differ here were
# measured apart (another --clinical table, another package version).
MEASURED_COLUMNS = ("qc", "qc_reasons", "voxel_count", "volume_mm3", "volume_ml", "spacing_mm", "bsa_m2",
                    "lavi_ml_per_m2", "lavi_grade", "clinical_sha256", "leftatriumseg_version")
# Provenance that changes the mask; a new package version with the same model and cleanup does not.
MASK_DEFINING_COLUMNS = ("model_sha256", "cleanup_options")
# What one case of a batch may raise without stopping the others: the user's files, not bugs.
CASE_ERRORS = (LeftAtriumSegError, ValueError, RuntimeError, OSError)

# The table of shard K of N (``BatchSettings.table_path``).
SHARD_TABLE_NAME = re.compile(r"volumes\.shard-(?P<shard>[0-9]+)-of-(?P<count>[0-9]+)\.csv")

OUTPUT_WRITERS = {"seg.nrrd": (SEGMENTATION_SUFFIX, write_segmentation), "nii.gz": (".nii.gz", write_label_map)}


@dataclass(frozen=True)
class BatchSettings:
    """Where and how a batch writes.

    Parameters
    ----------
    output_dir : folder for the masks and the table
    output_format : ``seg.nrrd`` (a Slicer segmentation) or ``nii.gz`` (a 0/1 label map)
    overwrite : segment cases again whose output exists, replacing it
    shard : ``(K, N)``: this run takes the K-th of N equal shares of the cases and writes its own
        table, ``volumes.shard-K-of-N.csv``
    """

    output_dir: Path
    output_format: str = "seg.nrrd"
    overwrite: bool = False
    shard: tuple[int, int] | None = None

    @property
    def table_path(self) -> Path:
        name = f"volumes.shard-{self.shard[0]}-of-{self.shard[1]}.csv" if self.shard else "volumes.csv"
        return self.output_dir / name

    @property
    def case_list_path(self) -> Path | None:
        """Where a sharded run lists all its cases (``record_case_list``), for ``merge``."""
        return shard_case_list(self.output_dir, self.shard[1]) if self.shard else None

    def output_path(self, case: CaseInput, output_format: str | None = None) -> Path:
        """Where the case's mask goes, in this run's format or in ``output_format``."""
        return self.output_dir / f"{case.case}{OUTPUT_WRITERS[output_format or self.output_format][0]}"


def collect_cases(inputs: list[str], manifest: str | None = None, series_uid: str | None = None) -> list[CaseInput]:
    """The cases of a run: image files, folders of them, DICOM folders and a manifest's rows.

    Every shard collects and checks the same whole list before it takes its share (``share_of``),
    so shards never overlap and two inputs of one name are found whichever shards they fall in.

    Raises
    ------
    LeftAtriumSegError
        For no inputs, or two inputs with the same case name (their outputs would collide).
    """
    cases = find_cases(inputs, series_uid)
    for case in cases:
        check_case_name(case.case, case.path)
    if manifest:
        cases += read_manifest(manifest)
    if not cases:
        raise LeftAtriumSegError("no input images: give image files, folders or --manifest")
    refuse_shared_names(cases)
    return cases


def refuse_shared_names(cases: list[CaseInput], remedy: str = "name them apart, e.g. with a --manifest 'case' column") -> None:
    """Raise LeftAtriumSegError for two inputs with one case name, saying ``remedy``: their outputs
    would be one file, and a mask would be taken for the other scan's."""
    first_by_name: dict[str, CaseInput] = {}
    for case in cases:
        if (first := first_by_name.get(case.case)) is not None:
            if os.path.abspath(first.path) == os.path.abspath(case.path):
                raise LeftAtriumSegError(f"{case.path}: given twice (once is enough)")
            raise LeftAtriumSegError(f"two inputs have the case name {case.case!r}: {first.path} and {case.path} "
                                     f"(their outputs would be one file; {remedy})")
        first_by_name[case.case] = case


def share_of(cases: list[CaseInput], shard: tuple[int, int] | None) -> list[CaseInput]:
    """Shard K of N's share of a run's cases (``_share``); all of them without a shard."""
    return _share(sorted(cases, key=lambda case: case.case), shard) if shard else cases


def _share(ordered_by_name: list, shard: tuple[int, int]) -> list:
    """Shard K of N's share of a run's cases, given in order of their names: every N-th from the K-th."""
    index, count = shard
    return ordered_by_name[index - 1 :: count]


def shard_case_list(output_dir: Path, count: int) -> Path:
    """The file where a run sharded N ways lists its cases (``record_case_list``)."""
    return output_dir / f"cases.shards-of-{count}.txt"


def record_case_list(cases: list[CaseInput], path: Path) -> None:
    """List a sharded run's cases (one name a line, sorted) for ``merge`` to find those no shard
    recorded, as from a shard stopped before its end. The first shard to start writes the list;
    the others must have the same (the caller holds the output folder's lock).

    Raises
    ------
    LeftAtriumSegError
        For a list another shard wrote that differs: the inputs changed between the shards, which
        would leave cases in no shard's share.
    """
    listed = "".join(f"{name}\n" for name in sorted(case.case for case in cases))
    if path.exists():
        earlier = path.read_text(encoding="utf-8")
        if earlier != listed:
            before, now = set(earlier.splitlines()), {case.case for case in cases}
            changes = [f"{what}: {some_names(sorted(names))}" for what, names in
                       (("new now", now - before), ("not given now", before - now)) if names]
            raise LeftAtriumSegError(
                f"{path}: the shards that ran before had other cases ({'; '.join(changes)}). Give every shard of a run "
                "the same inputs; for a new run, use another --output-dir, or merge the earlier run and move its "
                "shard tables and this list away (volumes.csv then credits its masks)")
        return
    with atomic_output(path) as temporary:
        temporary.write_text(listed, encoding="utf-8")


def check_outputs_apart_from_inputs(cases: list[CaseInput], settings: BatchSettings) -> None:
    """Refuse, before any work, an output that would replace an input or land outside the output
    folder."""
    inputs = {os.path.realpath(case.path) for case in cases}  # realpath: a link loop is the case's error, later
    folder = os.path.realpath(settings.output_dir)
    for case in cases:
        output = os.path.realpath(settings.output_path(case))
        if os.path.dirname(output) != folder:
            raise LeftAtriumSegError(f"{case.path}: case name {case.case!r} would write outside {settings.output_dir}")
        if output in inputs:
            raise LeftAtriumSegError(f"{output}: is an input image and would be replaced by a mask; "
                                     "choose another --output-dir or --format")


# A decimal number as people type one: Python's float() would also read "1_70" and other scripts'
# digits, a typo taken for a height.
DECIMAL_NUMBER = re.compile(r"\s*[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?\s*")


def _number(text: str, column: str) -> float:
    if not DECIMAL_NUMBER.fullmatch(text):
        hint = " (a decimal comma? write a point)" if re.fullmatch(r"\s*[0-9]+,[0-9]+\s*", text) else ""
        raise ValueError(f"{column} {text.strip()!r} is not a number{hint}")
    return float(text)


# Cells that say a value is missing, as statistics packages and spreadsheets export them (R's NA,
# pandas' NaN, SPSS's ., Excel's #N/A, a database's NULL, a dash).
MISSING_VALUE = re.compile(r"\s*(|na|n/a|#n/a|nan|null|\.|-)\s*", re.IGNORECASE)


def read_clinical(path: str | None) -> dict[str, tuple[float, float] | None]:
    """``case -> (height_cm, weight_kg)`` from a CSV with columns case, height_cm, weight_kg.

    A case whose height or weight is missing (an empty cell, ``NA``, ``NaN``, ``.``) maps to None:
    it gets no LA volume index. Any other value that is not a plausible number stops the command
    before any work, naming the line.
    """
    if not path:
        return {}
    table = read_csv(Path(path))
    if not {"case", "height_cm", "weight_kg"} <= set(table.columns):
        raise LeftAtriumSegError(f"{path}: needs a header row with columns case, height_cm, weight_kg")
    if not table.rows:
        raise LeftAtriumSegError(f"{path}: lists no case (a header row and nothing under it)")
    clinical, lines = {}, {}
    for line, row in zip(table.lines, table.rows):
        case = row["case"].strip()  # "la_003 ," as a hand-made CSV has it names la_003
        if case in lines:
            raise LeftAtriumSegError(f"{path}: case {case} has two rows, lines {lines[case]} and {line}")
        lines[case] = line
        if MISSING_VALUE.fullmatch(row["height_cm"]) or MISSING_VALUE.fullmatch(row["weight_kg"]):
            clinical[case] = None
            continue
        try:
            height_weight = tuple(_number(row[column], column) for column in ("height_cm", "weight_kg"))
            body_surface_area_m2(*height_weight)
        except ValueError as error:
            raise LeftAtriumSegError(f"{path}: line {line} (case {case}): {error}") from None
        clinical[case] = height_weight
    return clinical


def clinical_match_warnings(clinical: dict[str, tuple[float, float] | None], path: str | None,
                            cases: list[str]) -> list[str]:
    """``warning:`` lines where a clinical table leaves ``cases`` without an LA volume index, which
    would otherwise go unsaid: none of its cases is one (a table of another cohort, names written
    otherwise); a row names a case without a row but for letter case or an image suffix
    (``LA_003``, ``la_003.nii.gz`` for ``la_003``); cases that lack a height or a weight in it (a
    typo in a name, a missing value)."""
    if not clinical or not cases:
        return []
    here, measured = set(cases), {case for case, height_weight in clinical.items() if height_weight}
    if not set(clinical) & here:
        return [f"warning: {path}: none of its cases is a case here (it names {some_names(sorted(clinical), 3)}; "
                f"here: {some_names(sorted(here), 3)}): no LA volume index is given"]

    def loosely(name: str) -> str:
        name = name.strip().casefold()
        suffix = next((suffix for suffix in IMAGE_SUFFIXES if name.endswith(suffix)), "")
        return name[: len(name) - len(suffix)].strip()

    without_row = {loosely(case): case for case in here - set(clinical)}
    near = {without_row[loosely(row)]: f"{row!r} for {without_row[loosely(row)]!r}" for row in set(clinical) - here
            if loosely(row) in without_row}
    warnings = []
    if near:
        warnings.append(f"warning: {path}: rows named otherwise than their case ({some_names(sorted(near.values()), 3)}): "
                        "no LA volume index for those cases (names must match exactly)")
    if unmatched := sorted(here - measured - near.keys()):
        warnings.append(f"warning: {path}: {len(unmatched)} of {len(here)} cases lack a height or a weight in it "
                        f"({some_names(unmatched, 3)}): no LA volume index for them")
    return warnings


def shard_rows_prevail_warning(rows: list[dict], output_dir: Path) -> str | None:
    """A ``warning:`` line where an unsharded run measured again masks that a shard table of the
    folder records otherwise (a corrected ``--clinical`` table, say): ``merge`` takes the shard's
    row where the mask is the same, so the new measurement would not reach the merged table.
    ``rows`` are the run's rows as its table holds them (text)."""
    recorded: dict[str, dict] = {}
    for path in shard_tables(output_dir):
        try:
            recorded.update((row["case"], row) for row in read_table(path, ("case",)))
        except LeftAtriumSegError:
            continue  # merge says what is wrong with it
    cases = sorted(row["case"] for row in rows if row.get("status") != "failed" and row.get("output_sha256")
                   and (shard_row := recorded.get(row["case"])) is not None
                   and shard_row.get("output_sha256") == row["output_sha256"]
                   and any(shard_row.get(column, "") != row.get(column, "") for column in MEASURED_COLUMNS))
    if not cases:
        return None
    return (f"warning: {len(cases)} case(s) measured again here are recorded otherwise, with the same mask, in the "
            f"shard tables of {output_dir} ({some_names(cases, 3)}): merge keeps the shards' rows; to merge these "
            "measurements, run those shards again with these options (--shard K/N; their masks are kept and measured "
            "again)")


def same_scan_warning(rows: list[dict], table: Path) -> str | None:
    """A ``warning:`` line where rows of several cases record one scan (the same ``input_sha256``):
    a subject counted twice in a cohort's statistics, or a scan filed under two names."""
    cases_of: dict[str, list[str]] = {}
    for row in rows:
        if row.get("status") != "failed" and row.get("input_sha256"):
            cases_of.setdefault(row["input_sha256"], []).append(row["case"])
    repeated = sorted(" = ".join(sorted(cases)) for cases in cases_of.values() if len(cases) > 1)
    if not repeated:
        return None
    return (f"warning: {table}: {len(repeated)} scan(s) recorded under more than one case name, by their SHA-256 "
            f"({some_names(repeated, 3)}): one subject counted twice?")


def read_table(path: Path, required: tuple[str, ...] = ()) -> list[dict]:
    """The rows of a CSV table (a byte-order mark, as spreadsheets write one, is allowed); none
    where the file does not exist.

    Raises
    ------
    LeftAtriumSegError
        Naming the file, for one that is not a readable CSV table or lacks a ``required`` column,
        or, ``case`` being required, a row without a case name.
    """
    if not path.exists():
        return []
    table = read_csv(path)
    missing = [column for column in required if column not in table.columns]
    if missing:
        raise LeftAtriumSegError(f"{path}: has no {', '.join(missing)} column (edited by hand?); "
                                 "restore it or move the table away")
    if "case" in required:
        for line, row in zip(table.lines, table.rows):
            if not row["case"].strip():
                raise LeftAtriumSegError(f"{path}: line {line} names no case (edited by hand?); "
                                         "restore it or move the table away")
    return table.rows


def _table_columns(rows: list[dict]) -> tuple[str, ...]:
    """``VOLUME_COLUMNS``, then any column a user added, in the order first met: kept, not dropped."""
    added = dict.fromkeys(column for row in rows for column in row if column and column not in VOLUME_COLUMNS)
    return (*VOLUME_COLUMNS, *added)


def write_table(rows: list[dict], path: Path, columns: tuple[str, ...] | None = None, overwrite: bool = True) -> None:
    """Write rows as CSV, atomically: the table is whole or as it was."""
    with atomic_output(path, overwrite) as temporary, open(temporary, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns or rows[0]), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def result_tables(output_dir: Path) -> list[Path]:
    """The tables of an output folder: ``volumes.csv`` first, then the shards' tables."""
    return [path for path in (output_dir / "volumes.csv", *shard_tables(output_dir)) if path.is_file()]


def shard_tables(output_dir: Path) -> list[Path]:
    """The shard tables of an output folder (``volumes.shard-K-of-N.csv``), by name."""
    return sorted(output_dir.glob("volumes.shard-*-of-*.csv"))


def read_results(output_dir: Path) -> dict[str, list[dict]]:
    """Every row of each case in an output folder's tables, ``volumes.csv``'s first (a table is
    the latest word on its cases once ``merge`` has gathered the shards' into it)."""
    results: dict[str, list[dict]] = {}
    for path in result_tables(output_dir):
        try:
            rows = read_table(path, ("case",))
        except LeftAtriumSegError:
            continue  # a table edited out of shape credits nothing
        for row in rows:
            results.setdefault(row["case"], []).append(row)
    return results


def record_row(table_path: Path, row: dict) -> None:
    """Put a case's row into a table shared with other runs, under the output folder's lock."""
    with locked(table_path.parent):
        _update_table(table_path, row)


def added_columns(row: dict | None) -> dict:
    """The cells of a row in columns a user added to the table (notes on the case, say): theirs,
    kept in the row that replaces it."""
    return {column: value for column, value in (row or {}).items() if column not in VOLUME_COLUMNS}


def _update_table(table_path: Path, row: dict) -> None:
    """Read the table again, put ``row`` in its case's place, write it whole (the caller holds the
    folder's lock). A failed row does not replace a done one whose mask is still in place and
    unchanged: that mask keeps its record, which notes the failure in its ``error``."""
    rows = {earlier["case"]: earlier for earlier in read_table(table_path, ("case",))}
    earlier = rows.get(row["case"])
    if row["status"] == "failed" and earlier and earlier.get("status") != "failed" and mask_in_place(earlier, table_path.parent):
        rows[row["case"]] = {**earlier, "error": f"a later run failed, this mask kept: {row['error']}"}
    else:
        rows[row["case"]] = {**added_columns(earlier), **row}
    # Sorted by case: the cases of one run, made several at once, arrive in any order.
    ordered = [rows[case] for case in sorted(rows)]
    write_table(ordered, table_path, _table_columns(ordered))


def mask_in_place(row: dict, folder: Path) -> bool:
    """Whether a row's mask is in the output ``folder`` of its table and unchanged since (its
    ``output_sha256``). The mask is looked for by its name there: the recorded path may be relative
    to where that run was started, or name the folder this one was copied from."""
    output = folder / Path(row.get("output") or "").name
    return bool(row.get("output_sha256")) and output.is_file() and file_sha256(output) == row["output_sha256"]


def scan_check(row: dict) -> tuple[bool | None, str]:
    """Whether a row's scan is no longer the image its mask was made from (``input_sha256``), and
    its fingerprint now; None and "" where that cannot be told from here (no scan recorded, none
    found or readable there, no SHA-256 recorded).

    Only a scan whose ``io.scan_fingerprint`` is not the row's ``input_fingerprint`` (every scan of a
    row of a version before 0.17, which has none) is hashed again, so that a cohort's merge reads
    its scans' metadata, not their voxels. A DICOM folder is unchanged if any of its series is the
    recorded image (the table does not name the series).
    """
    if not row.get("input") or not row.get("input_sha256"):
        return None, ""
    scan = Path(row["input"])
    try:
        fingerprint = scan_fingerprint(scan)
        if fingerprint == row.get("input_fingerprint"):
            return False, fingerprint
        if not scan.is_dir():
            return file_sha256(scan) != row["input_sha256"], fingerprint
        for series_uid in dicom_series_ids(scan):
            if case_sha256(CaseInput(row["case"], scan, series_uid)) == row["input_sha256"]:
                return False, fingerprint
        return True, fingerprint
    except (OSError, LeftAtriumSegError):
        return None, ""


def mask_maker(row: dict) -> str:
    """The model and cleanup that made a row's mask, in words."""
    model, sha256, cleanup = (row.get(column) or "unknown" for column in ("model", *MASK_DEFINING_COLUMNS))
    if model == sha256 == cleanup == "unknown":
        return "a run this folder's table has no record of"
    return f"{model} (model file {sha256[:12]}) with cleanup '{cleanup}'"


def _kept_output_record(output_path: Path, input_sha256: str, case: CaseInput) -> dict:
    """The row that made an output found in place, if it was made from this case's image and is
    unchanged since; else ``LeftAtriumSegError`` saying why it cannot be credited."""
    with locked(output_path.parent):  # another thread or run may be replacing a table meanwhile
        rows = [row for table in result_tables(output_path.parent) for row in read_table(table)]
    recorded = [row for row in rows if Path(row.get("output") or "").name == output_path.name
                and row.get("status") != "failed" and row.get("output_sha256")]
    again = f"--overwrite segments {case.case} again"
    if not recorded:
        raise LeftAtriumSegError(f"{output_path}: exists, but no table in {output_path.parent} records which scan made "
                                 f"it (copied in, or made by a version before 0.12?); {again}")
    output_sha256 = file_sha256(output_path)
    unchanged = [row for row in recorded if row["output_sha256"] == output_sha256]
    if not unchanged:
        raise LeftAtriumSegError(f"{output_path}: has changed since the run that made it (its SHA-256 is not the "
                                 f"recorded one); {again}")
    for row in unchanged:
        if row.get("input_sha256") == input_sha256:
            return row
    raise LeftAtriumSegError(
        f"{output_path}: was made from another image (SHA-256 {unchanged[0].get('input_sha256', '')[:12]}...), not "
        f"from {case.path} ({input_sha256[:12]}...); {again}")


def _measurement_columns(mask, spacing_mm, height_weight: tuple[float, float] | None) -> dict:
    measurement = measure_atrium(mask, spacing_mm, *(height_weight or (None, None)))
    volume, index = measurement.volume, measurement.index
    # The spacing the volume was counted in: a header that states half the slice spacing halves the
    # volume, and nothing else in the table would show it (docs/model-development.md, "A flat atrium").
    columns = {"voxel_count": volume.voxel_count, "volume_mm3": f"{volume.volume_mm3:.1f}",
               "volume_ml": f"{volume.volume_ml:.2f}", "spacing_mm": " ".join(f"{s:.4g}" for s in spacing_mm)}
    if index is not None:
        columns.update({"bsa_m2": f"{index.bsa_m2:.3f}", "lavi_ml_per_m2": f"{index.ml_per_m2:.{LAVI_DECIMALS}f}",
                        "lavi_grade": index.grade})
    return columns


def _case_line(row: dict, output: Path) -> str:
    """The line said of a done case; ``output``: its mask's path as the command named its folder."""
    indexed = f", {float(row['lavi_ml_per_m2']):.{LAVI_DECIMALS}f} mL/m2, {row['lavi_grade']}" if row.get("lavi_grade") else ""
    kept = "" if row["status"] == "ok" else "mask kept, measured again; "  # skipped: output exists
    volume_ml = float(row["volume_mm3"]) / 1000  # not volume_ml's two decimals rounded again: 135.7456 -> 135.75 -> 135.8
    return (f"{row['case']}: left atrium {volume_ml:.1f} mL{indexed} ({kept}quality check: {row['qc']}) "
            f"-> {output}")


@contextmanager
def _stop_requests() -> Iterator[threading.Event]:
    """While a batch runs, SIGINT (Ctrl-C) and SIGTERM (SLURM's time limit) set an event, on which
    it starts no other case, instead of raising wherever they land.

    Raised mid-way, an interrupt can cut short the recording of a case; and a second one (Ctrl-C
    twice, or ``timeout``, which signals the process and then its group) that interrupts Python
    3.11's ``Thread.join`` makes it take a running thread for stopped: the interpreter then exits
    under the case in progress, which aborts the process and leaves the case unrecorded.
    """
    requested = threading.Event()

    def request(signal_number, frame) -> None:
        # On a line of its own: the progress bar ends its line only when it closes.
        print("\ninterrupted: finishing the scans under way, starting no other" if not requested.is_set() else
              "still finishing the scans under way; to stop at once, kill the process (no output is left "
              "half-written)", file=sys.stderr, flush=True)
        requested.set()

    with _signals_handled_by(request):
        yield requested


@contextmanager
def deferred_signals() -> Iterator[None]:
    """SIGINT and SIGTERM that come while the block runs take effect when it ends: for work that must
    not be cut in two (the handlers Python runs are swapped; blocking the signals in the main thread
    would not do, as another thread of the process receives them). On the main thread only."""
    received = []
    with _signals_handled_by(lambda signal_number, frame: received.append(signal_number)):
        yield
    if received:
        signal.raise_signal(received[0])


@contextmanager
def _signals_handled_by(handler) -> Iterator[None]:
    """SIGINT and SIGTERM go to ``handler`` while the block runs. Off the main thread, where no
    handler can be set, and for a signal the caller ignores or handles in C, nothing changes."""
    handlers = {}
    if threading.current_thread() is threading.main_thread():
        for number in (signal.SIGINT, signal.SIGTERM):
            # None: a handler set from C (an embedded Python), which could not be restored.
            if signal.getsignal(number) not in (signal.SIG_IGN, None):
                handlers[number] = signal.signal(number, handler)
    try:
        yield
    finally:
        for number, previous in handlers.items():
            signal.signal(number, previous)


def segment_batch(cases: list[CaseInput], segmenter: Segmenter, settings: BatchSettings,
                  clinical: dict[str, tuple[float, float] | None] | None = None, quiet: bool = False,
                  workers: int = 1, clinical_sha256: str = "") -> tuple[int, int]:
    """Segment the cases of ``settings.shard``'s share (all without a shard) into
    ``settings.output_dir`` and record a row per case in its table; a sharded run first lists all
    ``cases`` (``record_case_list``).

    A case whose image cannot be used fails alone: ``error: FILE: problem`` on standard error and a
    ``failed`` row; a result flagged for review gets a ``warning:`` line. ``workers`` cases are
    segmented at once, each on its own thread (the networks' sessions are shared: ONNX Runtime's
    ``Run`` may be called from several threads at once); the lines come in the cases' order.
    ``clinical_sha256``, the SHA-256 of the table ``clinical`` was read from, goes in every row:
    ``merge`` tells shards whose indexes came from different tables.
    Returns (cases done, cases failed).

    On SIGINT or SIGTERM the cases under way finish and are said and recorded, no other starts, and
    then ``KeyboardInterrupt`` is raised.

    Raises
    ------
    LeftAtriumSegError
        Before any case, for an output folder that cannot take files or outputs that would replace
        inputs; during the run, when the table itself cannot be written.
    """
    clinical = clinical or {}
    check_outputs_apart_from_inputs(cases, settings)
    create_output_folder(settings.output_dir)
    remove_stale_partials(settings.output_dir)
    table = settings.table_path
    if table.exists() and not os.access(table, os.W_OK):
        raise LeftAtriumSegError(f"{table}: is read-only; the run would replace it")
    with locked(settings.output_dir):  # a shard with no case still writes its table, for merge
        read_table(table, ("case", "status"))  # a table edited out of shape stops the run before any case
        if settings.case_list_path:
            record_case_list(cases, settings.case_list_path)
        if not table.exists():
            write_table([], table, VOLUME_COLUMNS)
    cases = share_of(cases, settings.shard)
    this_run = {"model": segmenter.config.label, "model_sha256": segmenter.model_sha256,
                "leftatriumseg_version": __version__, "cleanup_options": " ".join(segmenter.cleanup.options()),
                "clinical_sha256": clinical_sha256}

    done = failures = flagged = 0
    reasons_texts: list[str] = []
    bar = tqdm(total=len(cases), desc="segmenting", unit="case", disable=quiet, dynamic_ncols=True)

    def finish(row: dict, warnings: list[str]) -> None:
        nonlocal done, failures, flagged, quiet
        bar.update()
        for warning in warnings:
            bar.write(warning, file=sys.stderr)
        if row["status"] == "failed":
            failures += 1
        else:
            done += 1
            flagged += row.get("qc") == "review"
            reasons_texts.append(row.get("qc_reasons") or "")
            if not quiet:
                try:
                    bar.write(_case_line(row, settings.output_dir / Path(row["output"]).name))
                except BrokenPipeError:  # the reader went away (`| head`): the batch goes on unheard
                    quiet = True
        try:
            record_row(table, row)
        except OSError as error:
            raise LeftAtriumSegError(error_line(error, table)) from None

    with _stop_requests() as stop_requested:

        def segment_one(case: CaseInput) -> tuple[dict, list[str]] | None:
            if stop_requested.is_set():
                return None  # the run was asked to stop before this case began
            return _segment_case(case, segmenter, settings, this_run, clinical.get(case.case))

        pool = ThreadPoolExecutor(max(workers, 1))
        try:
            # Asked to stop, the run goes on to its end: the cases under way finish and are said
            # and recorded as the others were; no other starts.
            for future in [pool.submit(segment_one, case) for case in cases]:
                outcome = future.result()
                if outcome is not None:
                    finish(*outcome)
            if stop_requested.is_set():
                raise KeyboardInterrupt
        finally:
            pool.shutdown(wait=True, cancel_futures=True)  # stopped by the table: the same, unsaid
            bar.close()
    recorded = read_table(table)
    if warning := same_scan_warning(recorded, table):
        print(warning, file=sys.stderr)
    run_cases = {case.case for case in cases}
    if settings.shard is None and (warning := shard_rows_prevail_warning(
            [row for row in recorded if row["case"] in run_cases], settings.output_dir)):
        print(warning, file=sys.stderr)
    if not quiet:
        why = f" ({counts})" if (counts := reason_counts(reasons_texts)) else ""
        print(f"{done} of {len(cases)} cases done, {flagged} flagged for review{why}; volumes in {table}")
    return done, failures


def _segment_case(case: CaseInput, segmenter: Segmenter, settings: BatchSettings, this_run: dict,
                  height_weight: tuple[float, float] | None) -> tuple[dict, list[str]]:
    """One case of ``segment_batch``: its row, and the ``error:`` and ``warning:`` lines to show."""
    output_path = settings.output_path(case)
    masks_of_case = {output_format: settings.output_path(case, output_format) for output_format in OUTPUT_WRITERS}
    # Absolute, so that merge, report and the user's scripts find them from any working directory.
    row = {"case": case.case, "input": str(case.path.absolute()), "output": str(output_path.absolute()), **this_run}
    warnings = []
    try:
        # What the file system says of the scan as it is hashed: merge hashes again only a scan that differs.
        row["input_fingerprint"] = scan_fingerprint(case.path)
        row["input_sha256"] = case_sha256(case)
        for other_format, other in masks_of_case.items():
            if other_format != settings.output_format and other.exists() and not other.samefile(case.path):
                # Two masks of one case would leave evaluate and report no way to tell which is meant
                # (the scan itself may lie there under that name: segmented into its own folder).
                raise LeftAtriumSegError(f"{other}: this case's mask is already there as {other_format}; use "
                                         f"--format {other_format}, or move that mask away to segment it as "
                                         f"{settings.output_format}")
        if output_path.exists() and not settings.overwrite:
            made_by = _kept_output_record(output_path, row["input_sha256"], case)
            mask_image = read_mask(output_path)
            mask, spacing = sitk.GetArrayViewFromImage(mask_image) > 0, mask_image.GetSpacing()
            row.update({column: made_by.get(column, "") for column in (*PROVENANCE_COLUMNS, "qc", "qc_reasons")})
            row["status"] = "skipped: output exists"
            row.update(_measurement_columns(mask, spacing, height_weight))
            if any(row[column] != this_run[column] for column in MASK_DEFINING_COLUMNS):
                warnings.append(f"warning: {output_path}: kept as made by {mask_maker(row)}, which may not be what "
                                "this run would make (--overwrite segments it again)")
        else:
            image = read_case(case)
            result = segmenter.segment(image)
            row.update({"status": "ok", "qc": result.quality.flag, "qc_reasons": result.quality.reasons_text,
                        **_measurement_columns(result.mask, image.GetSpacing(), height_weight)})

            def commit(written: Path) -> None:
                # The mask and the row that says what made it appear together, under the folder's
                # lock: a killed run leaves no unrecorded mask, and of two runs making one case at
                # once, the second finds the first's mask instead of replacing it.
                row["output_sha256"] = file_sha256(written)
                with locked(settings.output_dir):
                    try:
                        refuse_existing_output(output_path, settings.overwrite)
                    except FileExistsError:
                        if output_path.is_dir():
                            raise
                        raise LeftAtriumSegError(f"{output_path}: another run made this case's mask while this one "
                                                 "worked on it; run again (without --overwrite) to credit that mask") from None
                    _update_table(settings.table_path, row)
                    place_output(written, output_path, settings.overwrite)

            OUTPUT_WRITERS[settings.output_format][1](result.mask, image, output_path, overwrite=settings.overwrite,
                                                       commit=commit)
    except (*CASE_ERRORS, MemoryError) as error:
        message = (f"{case.path}: out of memory (fewer scans at once: a lower --threads)" if isinstance(error, MemoryError)
                   else error_line(error, case.path, *masks_of_case.values()))
        # No flag, volume or provenance of a mask this run did not leave (one that failed to be written, say).
        failed = {"case": case.case, "input": row["input"], "output": "", "status": "failed", "error": message,
                  **this_run, "input_sha256": row.get("input_sha256", ""), "input_fingerprint": row.get("input_fingerprint", "")}
        return failed, [f"error: {message}"]
    if row["qc"] == "review":
        warnings.append(f"warning: {case.path}: review this result ({row['qc_reasons']})")
    return row, warnings


def _fingerprint_checked_since(row: dict, merged: dict | None) -> dict:
    """The scan fingerprint an earlier merge found the same image under (``scan_check``), for a
    shard's row of the same scan and mask: once checked, a scan is not read again."""
    if merged and merged.get("input_fingerprint") and all(
            merged.get(column) == row.get(column) for column in ("input_sha256", "output_sha256")):
        return {"input_fingerprint": merged["input_fingerprint"]}
    return {}


def _cases_by(rows: list[dict], key: Callable[[dict], str]) -> dict[str, list[str]]:
    """The cases of the rows that did not fail, grouped by ``key`` of their rows."""
    grouped: dict[str, list[str]] = {}
    for row in rows:
        if row["status"] != "failed":
            grouped.setdefault(key(row), []).append(row["case"])
    return grouped


def merge_shards(output_dir: Path) -> tuple[list[dict], list[str]]:
    """Combine the shard tables of an output folder into ``volumes.csv``.

    Rows of an unsharded run already in ``volumes.csv`` stay where no shard has the case. Returns
    the merged rows and the problems to report (missing shards; masks not all made alike; masks
    gone or changed since their rows).

    Raises
    ------
    LeftAtriumSegError
        For a folder that is not there, no shard tables, shard tables of runs with different shard
        counts, or one case in two shard tables.
    """
    if not output_dir.is_dir():
        raise LeftAtriumSegError(f"{output_dir}: {'not a folder' if output_dir.exists() else 'not found'}")
    shards = shard_tables(output_dir)
    if not shards:
        raise LeftAtriumSegError(f"{output_dir}: no volumes.shard-K-of-N.csv files to merge")
    numbers = {}
    for path in shards:
        if not (named := SHARD_TABLE_NAME.fullmatch(path.name)):
            raise LeftAtriumSegError(f"{path}: not a shard table's name (volumes.shard-K-of-N.csv, K and N numbers); "
                                     "rename it or move it away")
        numbers[path] = (int(named["shard"]), int(named["count"]))
    counts = {count for _, count in numbers.values()}
    if len(counts) != 1:
        raise LeftAtriumSegError(f"{output_dir}: shard tables of different runs ({', '.join(p.name for p in shards)}); "
                                 "move away the tables of the run you do not mean")
    expected = counts.pop()
    missing = sorted(set(range(1, expected + 1)) - {shard for shard, _ in numbers.values()})
    by_case: dict[str, tuple[Path, dict]] = {}
    for path in shards:
        for row in read_table(path, ("case", "status")):
            if row["case"] in by_case:
                raise LeftAtriumSegError(f"{output_dir}: case {row['case']!r} has rows in {by_case[row['case']][0].name} "
                                         f"and {path.name}; which is right?")
            by_case[row["case"]] = (path, row)
    table_path = output_dir / "volumes.csv"
    problems = []
    with locked(output_dir):
        earlier = {row["case"]: row for row in read_table(table_path, ("case", "status"))}
        unsharded = [row for case, row in earlier.items() if case not in by_case]
        # A row whose mask is in place and unchanged wins over one whose is not: a case segmented
        # again after the shards ran keeps its new record.
        newer = [row for case, (_, shard_row) in by_case.items() if (row := earlier.get(case)) is not None
                 and mask_in_place(row, output_dir) and not mask_in_place(shard_row, output_dir)]
        chosen = {**{case: row for case, (_, row) in by_case.items()}, **{row["case"]: row for row in newer}}
        rows = sorted([{**added_columns(earlier.get(case)), **row, **_fingerprint_checked_since(row, earlier.get(case))}
                       for case, row in chosen.items()] + unsharded, key=lambda row: row["case"])
        in_place = {row["case"]: mask_in_place(row, output_dir) for row in rows if row["status"] != "failed"}
        # A scan re-exported under its name after its shard ran: its row measures the earlier image.
        scans = {case: scan_check(row) for row in rows if in_place.get(case := row["case"])}
        for row in rows:
            if in_place.get(row["case"]):  # a folder moved or copied since: its masks are the ones here
                row["output"] = str((output_dir / Path(row["output"]).name).absolute())
            if scans.get(row["case"], (True,))[0] is False:  # found the same: no need to hash it next time
                row["input_fingerprint"] = scans[row["case"]][1]
        write_table(rows, table_path, _table_columns(rows))
    if warning := same_scan_warning(rows, table_path):
        problems.append(warning)
    if unsharded:
        problems.append(f"note: kept {len(unsharded)} row(s) of cases in {table_path} that no shard has")
    if newer:
        problems.append(f"note: kept {len(newer)} row(s) of {table_path} whose masks are newer than their shard's rows")
    # A clinical table edited while a job array queued, or left out of one shard: the same study
    # indexed two ways.
    if len(read := _cases_by(rows, lambda row: row.get("clinical_sha256") or "")) > 1:
        groups = sorted(read.items(), key=lambda group: len(group[1]), reverse=True)
        problems.append("warning: the cases were measured with different --clinical tables: " + "; ".join(
            f"{len(cases)} with {f'SHA-256 {table[:12]}...' if table else 'none recorded'} ({some_names(cases, 3)})"
            for table, cases in groups) + "; segment the cases of all but one again with that table (their masks are "
            "kept and measured again; with --shard K/N, as they ran), then merge")
    if len(made := _cases_by(rows, mask_maker)) > 1:
        counted = sorted(((len(cases), maker) for maker, cases in made.items()), reverse=True)
        problems.append("warning: the masks were not all made alike: "
                        + "; ".join(f"{count} by {maker}" for count, maker in counted))
    if missing:
        which = (f"shard {missing[0]} of {expected} has" if len(missing) == 1
                 else f"shards {', '.join(map(str, missing))} of {expected} have")
        problems.append(f"error: {which} no table yet (run segment with --shard K/{expected} for each)")
    case_list = shard_case_list(output_dir, expected)
    if case_list.exists():
        listed = case_list.read_text(encoding="utf-8").splitlines()  # in order of the names
        not_run = {name for shard in missing for name in _share(listed, (shard, expected))}
        unrecorded = sorted(set(listed) - not_run - {row["case"] for row in rows})
        if unrecorded:
            problems.append(f"error: {len(unrecorded)} case(s) of the run have no row in their shard's table: "
                            f"{some_names(unrecorded)} (a shard stopped before its end? run it again: it goes on "
                            "where it stopped)")
    else:  # a run without the list (made before there was one, or the list moved away)
        problems.append(f"warning: no {case_list.name} here: cases a shard stopped before reaching cannot be found")
    # A mask deleted or changed after its run: the row's volume is not that of what lies there.
    astray = [case for case, there in in_place.items() if not there]
    if astray:
        problems.append(f"error: {len(astray)} case(s) whose mask is gone or no longer the one its row measured: "
                        f"{some_names(astray)}; segment them again (--overwrite where a changed mask is to be replaced)")
    if changed := [case for case, (state, _) in scans.items() if state]:
        inputs = {row["case"]: row["input"] for row in rows}
        problems.append(f"error: {len(changed)} case(s) whose scan has changed since its mask was made: "
                        f"{some_names([f'{case} ({inputs[case]})' for case in changed])}; segment them again "
                        "with --overwrite")
    if unchecked := [case for case, (state, _) in scans.items() if state is None]:
        problems.append(f"note: {len(unchecked)} case(s) whose scan could not be checked against its row (not found "
                        f"or not readable from here, or no SHA-256 recorded): {some_names(unchecked)}")
    return rows, problems
