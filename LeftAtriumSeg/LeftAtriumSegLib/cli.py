"""Command line: ``leftatriumseg segment | merge | report | evaluate | train | ablate``.

Each command parses its arguments and calls the library: ``batch`` for ``segment`` and ``merge``,
``report``, ``evaluation``, ``training``. Errors in the user's files are printed as one line naming
the file; a batch goes on with the next case and the exit status is non-zero when any case failed.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import signal
import sys
import threading
from pathlib import Path

from . import __version__
from .errors import LeftAtriumSegError


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


def _parse_shard(text: str) -> tuple[int, int]:
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard takes K/N, e.g. 3/10, not {text!r}") from None
    if not 1 <= index <= count:
        hint = " (a job array numbered from 0: --shard $((SLURM_ARRAY_TASK_ID + 1))/N)" if index == 0 else ""
        raise argparse.ArgumentTypeError(f"--shard {text}: K must be between 1 and N{hint}")
    return index, count


def _parse_threads(text: str) -> int:
    try:
        threads = int(text)
    except ValueError:
        threads = -1
    if threads < 0:
        raise argparse.ArgumentTypeError(f"--threads takes a count >= 0 (0: the default), not {text!r}")
    return threads


def _parse_folds(text: str) -> int:
    try:
        folds = int(text)
    except ValueError:
        folds = -1
    if folds < 0 or folds == 1:
        raise argparse.ArgumentTypeError(f"--folds takes K >= 2 (cross-validation) or 0 (train on all cases), not {text!r}")
    return folds


def _parse_model_label(text: str) -> str:
    # The name and version head the model card and fill volumes.csv's model column, one line each.
    if not text.strip() or text != text.strip() or any(not character.isprintable() for character in text):
        raise argparse.ArgumentTypeError(f"{text!r}: words to print on one line are needed, without spaces at "
                                         "either end")
    return text


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
        given = getattr(namespace, self.dest) or {}
        if folder in given:
            parser.error(f"{option_string} {folder}: given twice; which spacing is the scans'?")
        setattr(namespace, self.dest, {**given, folder: spacing_mm})


def run_segment(args: argparse.Namespace) -> int:
    from .batch import BatchSettings, clinical_match_warnings, collect_cases, read_clinical, segment_batch, share_of  # noqa: PLC0415
    from .io import file_sha256  # noqa: PLC0415
    from .onnx_network import execution_providers  # noqa: PLC0415
    from .pipeline import Segmenter, available_cores, capped_threads  # noqa: PLC0415

    settings = BatchSettings(Path(args.output_dir), args.format, args.overwrite, args.shard)
    cases = collect_cases(args.inputs, args.manifest, args.series)
    clinical = read_clinical(args.clinical)
    for warning in clinical_match_warnings(clinical, args.clinical, [case.case for case in cases]):
        print(warning, file=sys.stderr)
    threads = capped_threads(args.threads)
    # Several scans on the CPU: one per core at once, their networks sharing the cores, which keeps
    # them busier than one scan's networks on all of them (docs/model-development.md, "Speed").
    cores = threads or available_cores()
    on_cpu = execution_providers(args.device) == ["CPUExecutionProvider"]
    workers = min(cores, len(share_of(cases, args.shard))) if on_cpu else 1
    network_threads = cores // workers if workers > 1 else threads
    segmenter = Segmenter.load(args.model, args.device, _cleanup_from(args), network_threads)
    try:
        _, failures = segment_batch(cases, segmenter, settings, clinical, args.quiet, workers,
                                    file_sha256(args.clinical) if args.clinical else "")
    except KeyboardInterrupt:
        print("interrupted: the masks made are kept; --overwrite segments every case again, without it the run goes on "
              "with the cases that have no mask" if args.overwrite else
              "interrupted: the same command goes on where it stopped (masks made are kept)", file=sys.stderr)
        return 130
    return 1 if failures else 0


def run_merge(args: argparse.Namespace) -> int:
    from .batch import merge_shards  # noqa: PLC0415

    rows, problems = merge_shards(Path(args.output_dir))
    failed = sum(row["status"] == "failed" for row in rows)
    print(f"merged {len(rows)} cases ({failed} failed) into {Path(args.output_dir) / 'volumes.csv'}")
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if any(problem.startswith("error:") for problem in problems) else 0


def run_report(args: argparse.Namespace) -> int:
    from .batch import read_clinical  # noqa: PLC0415
    from .report import write_report  # noqa: PLC0415

    clinical = read_clinical(args.clinical)
    try:
        _, failures = write_report(args.images, Path(args.predictions), Path(args.labels) if args.labels else None,
                                   clinical, Path(args.output_dir), args.overwrite, args.quiet, args.clinical)
    except KeyboardInterrupt:
        print("interrupted: the same command goes on where it stopped", file=sys.stderr)
        return 130
    return 1 if failures else 0


def run_evaluate(args: argparse.Namespace) -> int:
    from .batch import write_table  # noqa: PLC0415
    from .evaluation import evaluate_folders  # noqa: PLC0415
    from .io import refuse_existing_output  # noqa: PLC0415

    output = Path(args.output) if args.output else Path(args.predictions) / "evaluation.csv"
    refuse_existing_output(output, args.overwrite)
    rows, failures, missing = evaluate_folders(Path(args.predictions), Path(args.labels), show_progress=not args.quiet)
    if not rows:
        return 1
    write_table(rows, output, overwrite=args.overwrite)
    print(f"{'case':<24}{'Dice':>8}{'HD95 mm':>10}{'ASSD mm':>10}{'|dV| mL':>10}")
    for row in rows:
        print(f"{row['case']:<24}{row['dice']:>8.3f}{row['hd95_mm']:>10.2f}{row['assd_mm']:>10.2f}{row['abs_volume_error_ml']:>10.2f}")
    left_out = [f"{failures} case(s) failed" if failures else "", f"{missing} label(s) had no prediction" if missing else ""]
    left_out = " and ".join(part for part in left_out if part)
    print(f"written to {output}" + (f"; {left_out}: left out of the mean" if left_out else ""))
    cases = rows[:-1]
    if undefined := sum(math.isnan(row["hd95_mm"]) for row in cases):  # a missed atrium would flatter the mean
        print(f"note: the mean HD95 and ASSD are over {len(cases) - undefined} of {len(cases)} cases; {undefined} with "
              "an empty prediction or label have none", file=sys.stderr)
    return 1 if failures or missing else 0


def run_train(args: argparse.Namespace) -> int:
    import torch  # noqa: PLC0415

    from .datasets import DataFolders  # noqa: PLC0415
    from .model_card import write_model_card  # noqa: PLC0415
    from .model_file import ModelConfig  # noqa: PLC0415
    from .training import TrainingSettings, resolve_device, train_model  # noqa: PLC0415
    from .training.layout import MODEL_NAME, PROBABILITY_FOLDER, fold_folder  # noqa: PLC0415

    if args.threads:
        torch.set_num_threads(args.threads)
    settings = TrainingSettings(iterations=args.iterations, seed=args.seed, max_gain_change=args.max_gain_change,
                                max_offset=args.max_offset, gamma_probability=args.gamma_probability,
                                random_orientation=args.random_orientation, bfloat16=args.bfloat16,
                                fractional_labels=args.fractional_labels)
    config = ModelConfig(name=args.name, version=args.model_version, views=tuple(args.views))
    try:
        data = DataFolders(args.data, task02_headers=args.task02_headers, respaced=args.respaced or {})
        summary = train_model(data, args.output_dir, config, settings, folds=args.folds,
                              show_progress=not args.quiet, command=shlex.join(["leftatriumseg", *args.argv]),
                              device=resolve_device(args.device), overwrite=args.overwrite, resume=args.resume)
    except KeyboardInterrupt:
        print(f"interrupted: the same command with --resume goes on where the run in {args.output_dir} stopped",
              file=sys.stderr)
        return 130
    print(json.dumps({k: v for k, v in summary.items() if k not in ("settings", "config", "case_files_sha256")}, indent=2))
    output_dir = Path(args.output_dir)
    if args.folds:
        print(f"fold models: {fold_folder(output_dir, 0) / MODEL_NAME} to {fold_folder(output_dir, args.folds - 1)}; "
              f"held-out probability maps: {output_dir / PROBABILITY_FOLDER}; their Dice, HD95 and volume errors: the "
              "model card")
    else:
        print(f"model: {output_dir / MODEL_NAME}")
    print(f"model card: {write_model_card(output_dir)}")
    return 0


def run_ablate(args: argparse.Namespace) -> int:
    from .batch import write_table  # noqa: PLC0415
    from .evaluation import ablation_variants, cleanup_ablation  # noqa: PLC0415
    from .io import refuse_existing_output  # noqa: PLC0415

    refuse_existing_output(Path(args.output), args.overwrite)
    rows = cleanup_ablation(Path(args.probabilities), Path(args.labels), ablation_variants(_cleanup_from(args)),
                            show_progress=not args.quiet)
    write_table(rows, Path(args.output), overwrite=args.overwrite)
    print(f"{'variant':<28}{'Dice':>8}{'min Dice':>10}{'HD95 mm':>10}{'|dV| mL':>10}")
    for row in rows:
        print(f"{row['variant']:<28}{row['dice']:>8.4f}{row['min_dice']:>10.4f}{row['hd95_mm']:>10.2f}{row['abs_volume_error_ml']:>10.2f}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .model_file import ModelConfig  # noqa: PLC0415
    from .preprocessing import VIEW_AXES  # noqa: PLC0415
    from .training.settings import TrainingSettings  # noqa: PLC0415

    trained, model = TrainingSettings(), ModelConfig()

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
    segment.add_argument("--model", default=None,
                         help="a model file, or a model id of Resources/Models/Models.json (downloaded on first use); "
                              "default: the catalogue's default, the bundled model")
    segment.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                         help="where the networks run; cuda needs the onnxruntime-gpu package (default %(default)s)")
    segment.add_argument("--threads", type=_parse_threads, default=0,
                         help="CPU threads for the networks (default: one per CPU this process may use); with "
                              "several scans, up to that many are segmented at once, sharing them")
    segment.add_argument("--overwrite", action="store_true",
                         help="segment again and replace existing outputs (default: an output that a table of the "
                              "folder records as made from the same image is kept and measured again; any other "
                              "existing output fails its case)")
    segment.add_argument("--quiet", action="store_true", help="no progress bar, per-case lines or summary line")
    _add_cleanup_arguments(segment)
    segment.set_defaults(handler=run_segment)

    merge = commands.add_parser("merge", help="combine the volumes.shard-K-of-N.csv tables of a sharded run")
    merge.add_argument("output_dir", help="the --output-dir the shards wrote to")
    merge.set_defaults(handler=run_merge)

    report = commands.add_parser("report", help="montages, slice GIFs, surface meshes and an HTML report")
    report.add_argument("--images", nargs="+", required=True, help="the images that were segmented (files or folders)")
    report.add_argument("--predictions", required=True, help="folder of segment's outputs (.seg.nrrd or .nii.gz)")
    report.add_argument("--labels", help="folder of reference label maps, drawn in blue and scored")
    report.add_argument("--clinical", help="CSV with case, height_cm, weight_kg for BSA and LAVI")
    report.add_argument("--output-dir", required=True)
    report.add_argument("--overwrite", action="store_true", help="replace report.html and the pictures of cases made from other inputs than now")
    report.add_argument("--quiet", action="store_true")
    report.set_defaults(handler=run_report)

    evaluate = commands.add_parser("evaluate", help="Dice, HD95, ASSD and volume error against reference labels")
    evaluate.add_argument("--predictions", required=True, help="folder of predicted masks")
    evaluate.add_argument("--labels", required=True, help="folder of reference label maps (matched by case name)")
    evaluate.add_argument("--output", help="CSV to write (default PREDICTIONS/evaluation.csv)")
    evaluate.add_argument("--overwrite", action="store_true", help="replace an existing CSV")
    evaluate.add_argument("--quiet", action="store_true", help="no progress bar")
    evaluate.set_defaults(handler=run_evaluate)

    train = commands.add_parser("train", help="train a model, or cross-validate with --folds K")
    train.add_argument("--data", nargs="+", required=True, help="folders in the Decathlon layout (dataset.json)")
    train.add_argument("--output-dir", required=True,
                       help="folder for the model, its card, training.json and checkpoints (and each fold's with --folds)")
    train.add_argument("--folds", type=_parse_folds, default=0, help="K >= 2: cross-validate by case; 0: train on all cases")
    train.add_argument("--iterations", type=int, default=trained.iterations,
                       help="optimiser steps per network (default %(default)s)")
    train.add_argument("--views", nargs="+", choices=sorted(VIEW_AXES), default=list(model.views),
                       help=f"slicing directions, one network each; the first localises (default: {' '.join(model.views)})")
    train.add_argument("--seed", type=int, default=trained.seed,
                       help="seeds the initial weights and the crops (default %(default)s)")
    train.add_argument("--max-gain-change", type=float, default=trained.max_gain_change,
                       help="intensity gain jitter (default %(default)s)")
    train.add_argument("--max-offset", type=float, default=trained.max_offset,
                       help="intensity offset jitter in z-score units (default %(default)s)")
    def on_off(value) -> str:
        return "on" if value else "off"

    train.add_argument("--gamma-probability", type=float, default=trained.gamma_probability,
                       help="share of crops put through a random gamma curve, 0.7-1.5 (default %(default)s"
                            f"{': off' if not trained.gamma_probability else ''})")
    train.add_argument("--random-orientation", action=argparse.BooleanOptionalAction,
                       default=trained.random_orientation,
                       help=f"train on every axis order and flip of the model frame (default: {on_off(trained.random_orientation)})")
    train.add_argument("--bfloat16", action=argparse.BooleanOptionalAction, default=trained.bfloat16,
                       help="forward pass in bfloat16: faster on GPUs and CPUs with AVX512-BF16, much slower on "
                            f"other CPUs (default: {on_off(trained.bfloat16)})")
    train.add_argument("--fractional-labels", action=argparse.BooleanOptionalAction, default=trained.fractional_labels,
                       help="targets from each model-frame voxel's share of the mask, cut at 0.5 after "
                            f"augmentation (default: {on_off(trained.fractional_labels)})")
    train.add_argument("--task02-headers", nargs="+", default=[], metavar="FOLDER",
                       help="those --data folders whose images carry Task02_Heart's headers, which mislabel the "
                            "axes: their cases are trained on as given and turned to their anatomy, so the model also "
                            "knows scans with correct geometry")
    train.add_argument("--respaced", nargs=2, action=_RespacedFolder, metavar=("FOLDER", "X,Y,Z"),
                       help="a --data folder whose headers state a wrong voxel spacing, and the scans' spacing in "
                            "mm: each of its cases is drawn half the time as given, half with that spacing (repeatable)")
    train.add_argument("--threads", type=_parse_threads, default=0, help="torch CPU threads (default: torch's choice)")
    train.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                       help="where torch trains; auto: cuda when a GPU is there (default %(default)s)")
    train.add_argument("--name", type=_parse_model_label, default=model.name,
                       help="the model's name, as results and the card name it (default %(default)s)")
    train.add_argument("--model-version", type=_parse_model_label, default=model.version,
                       help="the model's version (default %(default)s)")
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
    ablate.add_argument("--labels", required=True, help="folder of reference label maps (matched by case name)")
    ablate.add_argument("--output", required=True, help="CSV to write")
    ablate.add_argument("--overwrite", action="store_true", help="replace an existing CSV")
    ablate.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_cleanup_arguments(ablate)
    ablate.set_defaults(handler=run_ablate)
    return parser


def _terminated(signal_number, frame) -> None:
    # SIGTERM (what SLURM and Kubernetes send at a time limit) as an interrupt, as Ctrl-C: the scans
    # under way are finished and recorded, no other starts, and no output is left half-written.
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    args.argv = argv  # as typed, for the model card of a training run
    in_main_thread = threading.current_thread() is threading.main_thread()
    if in_main_thread:
        caller_handler = signal.signal(signal.SIGTERM, _terminated)
    try:
        return args.handler(args)
    except (LeftAtriumSegError, ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, caller_handler)


if __name__ == "__main__":
    sys.exit(main())
