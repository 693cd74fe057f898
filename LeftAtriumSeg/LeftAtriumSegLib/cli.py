"""Command line: ``leftatriumseg segment | merge | report | evaluate | train | ablate``.

Errors in the user's files are printed as one line naming the file; a batch goes on with
the next case and the exit status is non-zero when any case failed.
"""

from __future__ import annotations

import argparse
import csv
import json
import shlex
import sys
from collections import Counter
from pathlib import Path

from . import __version__
from .errors import LeftAtriumSegError

# What made a row's mask: enough to make it again, or to tell that two masks were made alike.
PROVENANCE_COLUMNS = ("model", "model_sha256", "leftatriumseg_version", "cleanup_options")
VOLUME_COLUMNS = ("case", "input", "output", "status", "error", "voxel_count", "volume_mm3", "volume_ml",
                  "bsa_m2", "lavi_ml_per_m2", "lavi_grade", *PROVENANCE_COLUMNS)
# Provenance that changes the mask; a new package version with the same model and cleanup does not.
MASK_DEFINING_COLUMNS = ("model_sha256", "cleanup_options")


# What one case of a batch may raise without stopping the others: the user's files, not bugs.
CASE_ERRORS = (LeftAtriumSegError, ValueError, RuntimeError, OSError)


def _error_line(error: Exception, *paths: Path | None) -> str:
    """``PATH: problem``, naming one file once: the message as it is when it names one of
    ``paths`` already, else with the first of them in front."""
    message = str(error)
    return message if any(str(path) in message for path in paths if path) else f"{paths[0]}: {message}"


def _add_cleanup_arguments(parser: argparse.ArgumentParser) -> None:
    from .postprocessing import CleanupSettings  # noqa: PLC0415

    defaults = CleanupSettings()
    group = parser.add_argument_group("cleanup (defaults from the cross-validated ablation in the model card)")
    group.add_argument("--threshold", type=float, default=defaults.threshold, help="probability threshold (default %(default)s)")
    group.add_argument("--no-largest-component", dest="keep_largest_component", action="store_false",
                       help="keep every connected component")
    group.add_argument("--component-gap-mm", type=float, default=defaults.component_gap_mm,
                       help="also keep components this close to the largest (default %(default)s mm)")
    group.add_argument("--no-fill-holes", dest="fill_holes", action="store_false", help="leave enclosed holes")
    group.add_argument("--closing-radius-mm", type=float, default=defaults.closing_radius_mm,
                       help="morphological closing radius (default %(default)s mm; 0 = off)")


def _cleanup_from(args: argparse.Namespace):
    from .postprocessing import CleanupSettings  # noqa: PLC0415

    return CleanupSettings(args.threshold, args.keep_largest_component, args.component_gap_mm,
                           args.fill_holes, args.closing_radius_mm)


def cleanup_arguments(settings) -> list[str]:
    """The ``segment`` options that reproduce ``settings`` (a CleanupSettings); the inverse of parsing them."""
    arguments = ["--threshold", str(settings.threshold), "--component-gap-mm", str(settings.component_gap_mm),
                 "--closing-radius-mm", str(settings.closing_radius_mm)]
    if not settings.keep_largest_component:
        arguments.append("--no-largest-component")
    if not settings.fill_holes:
        arguments.append("--no-fill-holes")
    return arguments


def _write_csv(rows: list[dict], path: Path, columns: tuple[str, ...] | None = None, overwrite: bool = True) -> None:
    from .io import atomic_output  # noqa: PLC0415

    with atomic_output(path, overwrite) as temporary, open(temporary, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns or rows[0]), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def _progress_printer(args: argparse.Namespace, index: int, count: int):
    """With ``--progress-lines``, print ``progress F`` (0-1, whole batch) lines for a caller
    that watches this process, such as the Slicer module."""
    if not args.progress_lines:
        return None
    return lambda fraction: print(f"progress {(index + fraction) / count:.3f}", flush=True)


def _parse_shard(text: str) -> tuple[int, int]:
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard takes K/N, e.g. 3/10, not {text!r}") from None
    if not 1 <= index <= count:
        raise argparse.ArgumentTypeError(f"--shard {text}: K must be between 1 and N")
    return index, count


def _parse_threads(text: str) -> int:
    try:
        threads = int(text)
    except ValueError:
        threads = -1
    if threads < 0:
        raise argparse.ArgumentTypeError(f"--threads takes a count >= 0 (0: one per physical core), not {text!r}")
    return threads


class _RespacedFolder(argparse.Action):
    """``--respaced FOLDER X,Y,Z``, repeatable: collects ``{FOLDER: (x, y, z)}`` in mm."""

    def __call__(self, parser, namespace, values, option_string=None):
        from .io import MAX_SPACING_MM, MIN_SPACING_MM  # noqa: PLC0415

        folder, text = values
        try:
            spacing_mm = tuple(float(part) for part in text.split(","))
        except ValueError:
            spacing_mm = ()
        if len(spacing_mm) != 3 or not all(MIN_SPACING_MM <= s <= MAX_SPACING_MM for s in spacing_mm):
            parser.error(f"{option_string} {folder} {text}: the spacing must be x,y,z in mm, "
                         f"each {MIN_SPACING_MM}-{MAX_SPACING_MM}")
        setattr(namespace, self.dest, {**(getattr(namespace, self.dest) or {}), folder: spacing_mm})


def _collect_cases(args: argparse.Namespace):
    from .io import find_cases, read_manifest  # noqa: PLC0415

    cases = find_cases(args.inputs, args.series)
    if args.manifest:
        cases += read_manifest(args.manifest)
    if not cases:
        raise LeftAtriumSegError("no input images: give image files, folders or --manifest")
    if args.shard:
        # Every shard sees the same ordered list, so shards never overlap.
        index, count = args.shard
        cases = sorted(cases, key=lambda case: (case.case, str(case.path)))[index - 1 :: count]
    return cases


def _read_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _measure_existing(path: Path):
    """Volume of a complete output from an earlier run (outputs are only ever renamed into place)."""
    import SimpleITK as sitk  # noqa: PLC0415

    from .io import read_mask  # noqa: PLC0415
    from .measurements import measure_volume  # noqa: PLC0415

    image = read_mask(path)
    return measure_volume(sitk.GetArrayViewFromImage(image) > 0, image.GetSpacing())


def _provenance_of_existing(earlier_row: dict | None, output_path: Path) -> dict[str, str]:
    """What made an output found in place: the row an earlier run wrote for it in this table,
    else ``unknown`` (a mask copied in, or a run killed between writing the mask and its row)."""
    if earlier_row and Path(earlier_row.get("output") or "").name == output_path.name \
            and earlier_row.get("status") != "failed":
        return {column: earlier_row.get(column) or "unknown" for column in PROVENANCE_COLUMNS}
    return dict.fromkeys(PROVENANCE_COLUMNS, "unknown")


def _mask_maker(row: dict) -> str:
    """The model and cleanup that made a row's mask, in words."""
    model, sha256, cleanup = (row.get(column) or "unknown" for column in ("model", *MASK_DEFINING_COLUMNS))
    if model == sha256 == cleanup == "unknown":
        return "a run this folder's table has no record of"
    return f"{model} (model file {sha256[:12]}) with cleanup '{cleanup}'"


def _makers_of(predictions: Path, reports: list) -> str:
    """What made the reported masks, from the ``volumes.csv`` that ``segment`` wrote beside them."""
    try:
        recorded = {row["case"]: row for row in _read_rows(predictions / "volumes.csv")}
    except (OSError, UnicodeDecodeError, csv.Error, KeyError):
        recorded = {}
    makers = Counter(_mask_maker(recorded.get(report.case, {})) for report in reports)
    return "; ".join(f"{maker} ({count} of {len(reports)} cases)" for maker, count in makers.most_common())


def _read_clinical(path: str | None) -> dict[str, tuple[float, float]]:
    """``case -> (height_cm, weight_kg)`` from a CSV with columns case, height_cm, weight_kg.

    A case whose height or weight cell is empty gets no LA volume index; any other value that
    is not a plausible number stops the command before any work, naming the line.
    """
    from .measurements import body_surface_area_m2  # noqa: PLC0415

    if not path:
        return {}
    if not Path(path).is_file():
        raise LeftAtriumSegError(f"{path}: file not found")
    try:
        rows = _read_rows(Path(path))
    except (UnicodeDecodeError, csv.Error) as error:
        raise LeftAtriumSegError(f"{path}: cannot read as a CSV table ({error})") from None
    if not rows or not {"case", "height_cm", "weight_kg"} <= rows[0].keys():
        raise LeftAtriumSegError(f"{path}: needs a header row with columns case, height_cm, weight_kg")
    clinical = {}
    for line, row in enumerate(rows, start=2):
        if not (row["height_cm"] or "").strip() or not (row["weight_kg"] or "").strip():
            continue
        try:
            height_weight = float(row["height_cm"]), float(row["weight_kg"])
            body_surface_area_m2(*height_weight)
        except ValueError as error:
            raise LeftAtriumSegError(f"{path}: line {line} (case {row['case']}): {error}") from None
        clinical[row["case"]] = height_weight
    return clinical


def run_segment(args: argparse.Namespace) -> int:
    from tqdm import tqdm  # noqa: PLC0415

    from .io import (  # noqa: PLC0415
        SEGMENTATION_SUFFIX,
        create_output_folder,
        read_case,
        remove_stale_partials,
        write_label_map,
        write_segmentation,
    )
    from .measurements import SMALLEST_PLAUSIBLE_VOLUME_ML, index_volume  # noqa: PLC0415
    from .pipeline import Segmenter  # noqa: PLC0415

    output_dir = Path(args.output_dir)
    volumes_path = output_dir / (f"volumes.shard-{args.shard[0]}-of-{args.shard[1]}.csv" if args.shard else "volumes.csv")
    cases = _collect_cases(args)
    clinical = _read_clinical(args.clinical)
    remove_stale_partials(output_dir)
    segmenter = Segmenter.load(args.model, args.device, _cleanup_from(args), args.threads)
    create_output_folder(output_dir)
    suffix = SEGMENTATION_SUFFIX if args.format == "seg.nrrd" else ".nii.gz"
    writer = write_segmentation if args.format == "seg.nrrd" else write_label_map
    # Rows of earlier runs into this folder stay, unless this run has the same case.
    earlier = _read_rows(volumes_path)
    earlier_by_case = {row["case"]: row for row in earlier}
    this_run = {"model": segmenter.model_label, "model_sha256": segmenter.model_sha256,
                "leftatriumseg_version": __version__, "cleanup_options": " ".join(cleanup_arguments(segmenter.cleanup))}
    rows, failures, seen = [], 0, set()
    progress = tqdm(cases, desc="segmenting", unit="case", disable=args.quiet, dynamic_ncols=True)
    for index, case in enumerate(progress):
        output_path = output_dir / f"{case.case}{suffix}"
        row = {"case": case.case, "input": str(case.path), "output": str(output_path), **this_run}
        try:
            if case.case in seen:
                raise LeftAtriumSegError(f"{case.path}: another input has the same case name {case.case!r}")
            seen.add(case.case)
            if output_path.exists() and not args.overwrite:
                volume, status = _measure_existing(output_path), "skipped: output exists"
                row.update(_provenance_of_existing(earlier_by_case.get(case.case), output_path))
                if any(row[column] != this_run[column] for column in MASK_DEFINING_COLUMNS):
                    progress.write(f"warning: {output_path}: kept as made by {_mask_maker(row)}, which may not be "
                                   "what this run would make (--overwrite segments it again)", file=sys.stderr)
            else:
                image = read_case(case)
                mask, volume = segmenter.segment_and_measure(image, _progress_printer(args, index, len(cases)))
                writer(mask, image, output_path, overwrite=args.overwrite)
                status = "ok"
        except CASE_ERRORS as error:
            failures += 1
            message = _error_line(error, case.path)
            progress.write(f"error: {message}", file=sys.stderr)
            rows.append({**row, "output": "", "status": "failed", "error": message})
        else:
            if volume.volume_ml < SMALLEST_PLAUSIBLE_VOLUME_ML:
                status += f"; check: under {SMALLEST_PLAUSIBLE_VOLUME_ML:g} mL, atrium probably missed"
                progress.write(f"warning: {case.path}: left atrium of {volume.volume_ml:.1f} mL, probably missed "
                               "(is the heart in the field of view, in the orientation the model knows? "
                               "See the model card's limitations)", file=sys.stderr)
            row.update({"status": status, "error": "", "voxel_count": volume.voxel_count,
                        "volume_mm3": f"{volume.volume_mm3:.1f}", "volume_ml": f"{volume.volume_ml:.2f}"})
            indexed = ""
            if case.case in clinical:
                index = index_volume(volume.volume_ml, *clinical[case.case])
                row.update({"bsa_m2": f"{index.bsa_m2:.3f}", "lavi_ml_per_m2": f"{index.ml_per_m2:.2f}",
                            "lavi_grade": index.grade})
                indexed = f", {index.ml_per_m2:.1f} mL/m2, {index.grade}"
            rows.append(row)
            if not args.quiet:
                progress.write(f"{case.case}: left atrium {volume.volume_ml:.1f} mL{indexed} ({status}) -> {output_path}")
        # Rewritten after every case: a run stopped halfway still has a correct table.
        _write_csv([r for r in earlier if r["case"] not in seen] + rows, volumes_path, VOLUME_COLUMNS)
    if not args.quiet:
        print(f"{len(rows) - failures} of {len(rows)} cases done; volumes in {volumes_path}")
    return 1 if failures else 0


def run_merge(args: argparse.Namespace) -> int:
    """Combine the per-shard tables of one output folder into volumes.csv."""
    output_dir = Path(args.output_dir)
    shards = sorted(output_dir.glob("volumes.shard-*-of-*.csv"))
    if not shards:
        raise LeftAtriumSegError(f"{output_dir}: no volumes.shard-K-of-N.csv files to merge")
    counts = {path.name.rsplit("-of-", 1)[1] for path in shards}
    if len(counts) != 1:
        raise LeftAtriumSegError(f"{output_dir}: shard tables of different runs ({', '.join(p.name for p in shards)})")
    expected = int(counts.pop().split(".")[0])
    missing = sorted(set(range(1, expected + 1)) - {int(p.name.split("-")[1]) for p in shards})
    rows = [row for path in shards for row in _read_rows(path)]
    rows.sort(key=lambda row: row["case"])
    _write_csv(rows, output_dir / "volumes.csv", VOLUME_COLUMNS)
    failed = sum(row["status"] == "failed" for row in rows)
    print(f"merged {len(shards)} shard tables, {len(rows)} cases ({failed} failed) into {output_dir / 'volumes.csv'}")
    makers = Counter(_mask_maker(row) for row in rows if row["status"] != "failed")
    if len(makers) > 1:
        print("warning: the masks were not all made alike: "
              + "; ".join(f"{count} by {maker}" for maker, count in makers.most_common()), file=sys.stderr)
    if missing:
        print(f"error: shards {', '.join(map(str, missing))} of {expected} have no table yet", file=sys.stderr)
        return 1
    return 0


def run_report(args: argparse.Namespace) -> int:
    import SimpleITK as sitk  # noqa: PLC0415
    from tqdm import tqdm  # noqa: PLC0415

    from .evaluation import files_by_case, same_grid  # noqa: PLC0415
    from .io import create_output_folder, find_cases, read_case, read_mask, refuse_existing_output  # noqa: PLC0415
    from .report import report_case, write_html_report  # noqa: PLC0415

    output_dir = Path(args.output_dir)
    report_path = output_dir / "report.html"
    refuse_existing_output(report_path, args.overwrite)
    predictions = files_by_case(Path(args.predictions))
    labels = files_by_case(Path(args.labels)) if args.labels else {}
    clinical = _read_clinical(args.clinical)
    cases = [case for case in find_cases(args.images) if case.case in predictions]
    if not cases:
        raise LeftAtriumSegError(f"no image in {', '.join(args.images)} has a prediction in {args.predictions}")
    create_output_folder(output_dir)
    reports, failures = [], 0
    for case in tqdm(cases, desc="report", unit="case", disable=args.quiet, dynamic_ncols=True):
        try:
            image = read_case(case)
            masks = []
            for path in (predictions[case.case], labels.get(case.case)):
                if path is None:
                    masks.append(None)
                    continue
                mask_image = read_mask(path)
                if not same_grid(mask_image, image):
                    raise LeftAtriumSegError(f"{path}: not on the grid of its image {case.path}")
                masks.append(sitk.GetArrayFromImage(mask_image) > 0)
            height_weight = clinical.get(case.case, (None, None))
            reports.append(report_case(case.case, image, masks[0], masks[1], output_dir, args.overwrite, *height_weight))
        except CASE_ERRORS as error:
            failures += 1
            line = _error_line(error, case.path, predictions[case.case], labels.get(case.case))
            print(f"error: {line}", file=sys.stderr)
    if reports:
        write_html_report(report_path, reports, args.overwrite, _makers_of(Path(args.predictions), reports))
        if not args.quiet:
            print(f"report of {len(reports)} case(s): {report_path}")
    return 1 if failures else 0


def run_evaluate(args: argparse.Namespace) -> int:
    from tqdm import tqdm  # noqa: PLC0415

    from .evaluation import evaluate_case, matched_cases, summarise  # noqa: PLC0415
    from .io import refuse_existing_output  # noqa: PLC0415

    output = Path(args.output) if args.output else Path(args.predictions) / "evaluation.csv"
    refuse_existing_output(output, args.overwrite)
    cases = matched_cases(Path(args.predictions), Path(args.labels))
    if not cases:
        raise LeftAtriumSegError(f"no case is in both {args.predictions} and {args.labels}")
    rows, failures = [], 0
    progress = tqdm(cases, desc="evaluating", unit="case", disable=args.quiet, dynamic_ncols=True)
    for case, prediction, label in progress:
        try:
            rows.append({"case": case, **evaluate_case(prediction, label)})
        except CASE_ERRORS as error:
            failures += 1
            progress.write(f"error: {_error_line(error, prediction, label)}", file=sys.stderr)
    if not rows:
        return 1
    rows.append(summarise(rows))
    _write_csv(rows, output, overwrite=args.overwrite)
    print(f"{'case':<24}{'Dice':>8}{'HD95 mm':>10}{'ASSD mm':>10}{'|dV| mL':>10}")
    for row in rows:
        print(f"{row['case']:<24}{row['dice']:>8.3f}{row['hd95_mm']:>10.2f}{row['assd_mm']:>10.2f}{row['abs_volume_error_ml']:>10.2f}")
    print(f"written to {output}" + (f"; {failures} case(s) failed, left out of the mean" if failures else ""))
    return 1 if failures else 0


def run_train(args: argparse.Namespace) -> int:
    import torch  # noqa: PLC0415

    from .model_card import write_model_card  # noqa: PLC0415
    from .model_file import ModelConfig  # noqa: PLC0415
    from .training import TrainingSettings, resolve_device, train_model  # noqa: PLC0415

    if args.threads:
        torch.set_num_threads(args.threads)
    # Only what was given on the command line; everything else keeps TrainingSettings' defaults.
    given = {"iterations": args.iterations, "max_gain_change": args.max_gain_change, "max_offset": args.max_offset,
             "random_orientation": args.random_orientation, "bfloat16": args.bfloat16,
             "fractional_labels": args.fractional_labels}
    settings = TrainingSettings(seed=args.seed, **{name: value for name, value in given.items() if value is not None})
    config = ModelConfig(name=args.name, version=args.model_version,
                         **({"views": tuple(args.views)} if args.views else {}))
    try:
        summary = train_model(args.data, args.output_dir, config, settings, folds=args.folds,
                              show_progress=not args.quiet, command=shlex.join(["leftatriumseg", *args.argv]),
                              device=resolve_device(args.device), overwrite=args.overwrite, resume=args.resume,
                              task02_folders=args.task02_headers, respaced_folders=args.respaced)
    except KeyboardInterrupt:
        print(f"interrupted: the same command with --resume goes on from the checkpoints in {args.output_dir}",
              file=sys.stderr)
        return 130
    print(json.dumps({k: v for k, v in summary.items() if k not in ("settings", "config")}, indent=2))
    print(f"model card: {write_model_card(args.output_dir)}")
    return 0


def run_ablate(args: argparse.Namespace) -> int:
    from .evaluation import ablation_variants, cleanup_ablation  # noqa: PLC0415
    from .io import refuse_existing_output  # noqa: PLC0415

    refuse_existing_output(Path(args.output), args.overwrite)
    rows = cleanup_ablation(Path(args.probabilities), Path(args.labels), ablation_variants(_cleanup_from(args)),
                            show_progress=not args.quiet)
    _write_csv(rows, Path(args.output), overwrite=args.overwrite)
    print(f"{'variant':<28}{'Dice':>8}{'min Dice':>10}{'HD95 mm':>10}{'|dV| mL':>10}")
    for row in rows:
        print(f"{row['variant']:<28}{row['dice']:>8.4f}{row['min_dice']:>10.4f}{row['hd95_mm']:>10.2f}{row['abs_volume_error_ml']:>10.2f}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .preprocessing import VIEW_AXES  # noqa: PLC0415

    parser = argparse.ArgumentParser(prog="leftatriumseg", description="Left-atrium segmentation of 3D cardiac MRI.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    segment = commands.add_parser("segment", help="segment images and report left-atrium volumes")
    segment.add_argument("inputs", nargs="*", help="3D image files (NIfTI, NRRD, MHA, ...), folders of them, or DICOM folders")
    segment.add_argument("--manifest", help="CSV with an 'image' column (and optional 'case', 'series_uid')")
    segment.add_argument("--series", help="DICOM series instance UID to read from a folder holding several")
    segment.add_argument("--clinical", help="CSV with case, height_cm, weight_kg: adds BSA and the LA volume index")
    segment.add_argument("--output-dir", required=True, help="folder for masks and volumes.csv")
    segment.add_argument("--shard", type=_parse_shard, metavar="K/N",
                         help="segment only the K-th of N equal shares of the cases (e.g. a job array task)")
    segment.add_argument("--format", choices=("seg.nrrd", "nii.gz"), default="seg.nrrd",
                         help="Slicer segmentation or NIfTI label map (default %(default)s)")
    segment.add_argument("--model", default=None, help="model file (default: the bundled model)")
    segment.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                         help="where the networks run; cuda needs the onnxruntime-gpu package (default %(default)s)")
    segment.add_argument("--threads", type=_parse_threads, default=0,
                         help="CPU threads for the networks (default: one per physical core)")
    segment.add_argument("--overwrite", action="store_true",
                         help="segment again and replace existing outputs (default: cases with an output are skipped)")
    segment.add_argument("--quiet", action="store_true", help="no progress bar or per-case lines")
    segment.add_argument("--progress-lines", action="store_true",
                         help="print 'progress F' lines (0-1) on standard output, for programs that run this one")
    _add_cleanup_arguments(segment)
    segment.set_defaults(handler=run_segment)

    merge = commands.add_parser("merge", help="combine the volumes.shard-K-of-N.csv tables of a sharded run")
    merge.add_argument("output_dir", help="the --output-dir the shards wrote to")
    merge.set_defaults(handler=run_merge)

    report = commands.add_parser("report", help="montages, slice GIFs, surface meshes and an HTML report")
    report.add_argument("--images", nargs="+", required=True, help="the images that were segmented (files or folders)")
    report.add_argument("--predictions", required=True, help="folder of segment's outputs (.seg.nrrd or .nii.gz)")
    report.add_argument("--labels", help="folder of reference label maps, drawn in green and scored")
    report.add_argument("--clinical", help="CSV with case, height_cm, weight_kg for BSA and LAVI")
    report.add_argument("--output-dir", required=True)
    report.add_argument("--overwrite", action="store_true", help="replace existing pictures and report")
    report.add_argument("--quiet", action="store_true")
    report.set_defaults(handler=run_report)

    evaluate = commands.add_parser("evaluate", help="Dice, HD95, ASSD and volume error against reference labels")
    evaluate.add_argument("--predictions", required=True, help="folder of predicted masks")
    evaluate.add_argument("--labels", required=True, help="folder of reference label maps (same file names)")
    evaluate.add_argument("--output", help="CSV to write (default PREDICTIONS/evaluation.csv)")
    evaluate.add_argument("--overwrite", action="store_true", help="replace an existing CSV")
    evaluate.add_argument("--quiet", action="store_true", help="no progress bar")
    evaluate.set_defaults(handler=run_evaluate)

    train = commands.add_parser("train", help="train a model, or cross-validate with --folds K")
    train.add_argument("--data", nargs="+", required=True, help="folders in the Decathlon layout (dataset.json)")
    train.add_argument("--output-dir", required=True)
    train.add_argument("--folds", type=int, default=0, help="K >= 2: cross-validate by case; 0: train on all cases")
    train.add_argument("--iterations", type=int, help="training iterations (default: TrainingSettings.iterations)")
    train.add_argument("--views", nargs="+", choices=sorted(VIEW_AXES),
                       help="slicing directions, one network each; the first localises (default: ModelConfig.views)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--max-gain-change", type=float, help="intensity gain jitter (default: TrainingSettings.max_gain_change)")
    train.add_argument("--max-offset", type=float,
                       help="intensity offset jitter in z-score units (default: TrainingSettings.max_offset)")
    train.add_argument("--random-orientation", action=argparse.BooleanOptionalAction, default=None,
                       help="train on every axis order and flip of the model frame "
                            "(default: TrainingSettings.random_orientation, off)")
    train.add_argument("--bfloat16", action=argparse.BooleanOptionalAction, default=None,
                       help="forward pass in bfloat16: faster on GPUs and CPUs with AVX512-BF16, much slower on "
                            "other CPUs (default: TrainingSettings.bfloat16, off)")
    train.add_argument("--fractional-labels", action=argparse.BooleanOptionalAction, default=None,
                       help="targets from each model-frame voxel's share of the mask, cut at 0.5 after "
                            "augmentation (default: TrainingSettings.fractional_labels, off)")
    train.add_argument("--task02-headers", nargs="+", default=[], metavar="FOLDER",
                       help="those --data folders whose images carry Task02_Heart's headers, which mislabel the "
                            "axes: their cases are trained on as given and turned to their anatomy, so the model also "
                            "knows scans with correct geometry")
    train.add_argument("--respaced", nargs=2, action=_RespacedFolder, metavar=("FOLDER", "X,Y,Z"),
                       help="a --data folder whose headers state a wrong voxel spacing, and the scans' spacing in "
                            "mm: each of its cases is drawn half the time as given, half with that spacing (repeatable)")
    train.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    train.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    train.add_argument("--name", default="LeftAtriumSeg")
    train.add_argument("--model-version", default="0")
    into_earlier_run = train.add_mutually_exclusive_group()
    into_earlier_run.add_argument("--overwrite", action="store_true",
                                  help="train into an --output-dir that is not empty, replacing an earlier run's files")
    into_earlier_run.add_argument("--resume", action="store_true",
                                  help="go on with the interrupted run in --output-dir from its checkpoints "
                                       "(same data and options as that run)")
    train.add_argument("--quiet", action="store_true")
    train.set_defaults(handler=run_train)

    ablate = commands.add_parser("ablate", help="score cleanup variants on cross-validation probability maps")
    ablate.add_argument("--probabilities", required=True, help="the probabilities/ folder of a cross-validation run")
    ablate.add_argument("--labels", required=True)
    ablate.add_argument("--output", required=True, help="CSV to write")
    ablate.add_argument("--overwrite", action="store_true", help="replace an existing CSV")
    ablate.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_cleanup_arguments(ablate)
    ablate.set_defaults(handler=run_ablate)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    args.argv = argv  # as typed, for the model card of a training run
    if getattr(args, "model", "") is None:
        from .pipeline import DEFAULT_MODEL_PATH  # noqa: PLC0415

        args.model = DEFAULT_MODEL_PATH
    try:
        return args.handler(args)
    except (LeftAtriumSegError, ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
