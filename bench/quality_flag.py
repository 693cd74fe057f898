"""The quality flag on a cross-validation's held-out cases: per case and presentation, Dice, volume
error, the signals the flag reads (``quality.QualitySignals``) and the flag, then for each
presentation every case with Dice under 0.85 and whether it was flagged, and the share of the
other cases flagged, and the range of each presentation's flatness (superior-inferior over
right-left extent) on the masks and on the reference masks. ``--csv`` keeps the table for
choosing thresholds. With ``--model`` (the bundled one by default) instead of ``--run``, every case
is scored by one model: the bundled model's own training cases, an optimistic view.

    .venv/bin/python bench/quality_flag.py DATA --run RUN [--respaced X,Y,Z] [--header-corrected]
        [--oblique 30] [--csv FILE]

Presentations: the scans as given; with ``--header-corrected``, Task02_Heart's scans with their
headers corrected to the anatomy (``datasets.task02_header_corrected``, as a scanner's DICOM gives
them); with ``--respaced``, with that voxel spacing (la2018_lge's files
state 0.625 mm between slices where the scans' are 1.25 mm); with ``--oblique``, acquired obliquely
(``datasets.acquired_obliquely``) by that angle.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from LeftAtriumSegLib.datasets import acquired_obliquely, read_decathlon_cases, task02_header_corrected
from LeftAtriumSegLib.io import read_mask
from LeftAtriumSegLib.metrics import segmentation_metrics
from LeftAtriumSegLib.pipeline import Segmenter, si_rl_extent_ratio
from presentations import add_model_arguments, case_models

FAILURE_DICE = 0.85


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help="a Decathlon folder (dataset.json, imagesTr/, labelsTr/)")
    parser.add_argument("--respaced", help="x,y,z mm: also present every case with this voxel spacing")
    parser.add_argument("--header-corrected", action="store_true",
                        help="also present every case with its Task02_Heart header corrected to the anatomy")
    parser.add_argument("--oblique", type=float, help="degrees: also present every case acquired obliquely")
    parser.add_argument("--csv", type=Path, help="write the per-case table here")
    add_model_arguments(parser)
    args = parser.parse_args()
    presentations = {"as given": lambda image: image}
    if args.respaced:
        spacing = tuple(float(part) for part in args.respaced.split(","))

        def respaced(image: sitk.Image) -> sitk.Image:
            copy = sitk.Image(image)
            copy.SetSpacing(spacing)
            return copy

        presentations[f"spacing {args.respaced}"] = respaced
    if args.header_corrected:
        presentations["header corrected"] = task02_header_corrected
    if args.oblique:
        presentations[f"oblique {args.oblique:g}"] = lambda image: acquired_obliquely(image, args.oblique)
    cases = read_decathlon_cases(args.data)
    models = case_models(cases, args)
    rows = []
    segmenters: dict[Path, Segmenter] = {}
    for case in cases:
        if case.case_id not in models:
            continue
        if models[case.case_id] not in segmenters:
            segmenters[models[case.case_id]] = Segmenter.load(models[case.case_id], "cpu")
        segmenter = segmenters[models[case.case_id]]
        image, mask = sitk.ReadImage(str(case.image_path)), read_mask(case.label_path)
        for name, present in presentations.items():
            presented, reference = present(image), present(mask)
            result = segmenter.segment(presented)
            reference_mask = sitk.GetArrayFromImage(reference) > 0
            metrics = segmentation_metrics(result.mask, reference_mask, presented.GetSpacing())
            signals = result.signals
            rows.append({"case": case.case_id, "presentation": name, "dice": round(metrics["dice"], 4),
                         "volume_error_ml": round(metrics["predicted_ml"] - metrics["reference_ml"], 2),
                         "reference_ml": round(metrics["reference_ml"], 2), "volume_ml": round(signals.volume_ml, 2),
                         "view_agreement": round(signals.view_agreement, 4), "box_contact": signals.box_contact,
                         "edge_contact": signals.edge_contact, "uncertain_share": round(signals.uncertain_share, 4),
                         "faint_share": round(signals.faint_share, 4),
                         "si_rl_extent_ratio": round(signals.si_rl_extent_ratio, 3),
                         "reference_si_rl_extent_ratio": round(si_rl_extent_ratio(reference_mask, presented), 3),
                         "qc": result.quality.flag,
                         "qc_reasons": "; ".join(result.quality.reasons)})
            row = rows[-1]
            print(f"{row['case']:22s} {name:16s} Dice {row['dice']:.3f} {row['volume_error_ml']:+7.1f} mL  "
                  f"agreement {row['view_agreement']:.3f} uncertain {row['uncertain_share']:.3f} faint {row['faint_share']:.3f} box {row['box_contact']:4d} "
                  f"edge {row['edge_contact']:4d} flatness {row['si_rl_extent_ratio']:.2f}  "
                  f"{row['qc']}", flush=True)
    if args.csv:
        with open(args.csv, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    for name in presentations:
        shown = [row for row in rows if row["presentation"] == name]
        failures = [row for row in shown if row["dice"] < FAILURE_DICE]
        others = [row for row in shown if row["dice"] >= FAILURE_DICE]
        flagged_others = sum(row["qc"] == "review" for row in others)
        dice = np.array([row["dice"] for row in shown])
        print(f"{name}: {len(shown)} cases, mean Dice {dice.mean():.3f} (lowest {dice.min():.3f}); "
              f"under {FAILURE_DICE}: " + (", ".join(f"{row['case']} {row['dice']:.3f} {row['qc']}" for row in failures)
                                           or "none")
              + f"; others flagged: {flagged_others} of {len(others)} ({100 * flagged_others / max(len(others), 1):.0f}%)")
        flatness = {column: [row[column] for row in shown]
                    for column in ("si_rl_extent_ratio", "reference_si_rl_extent_ratio")}
        print(f"  flatness (superior-inferior / right-left extent): masks {min(flatness['si_rl_extent_ratio']):.2f}-"
              f"{max(flatness['si_rl_extent_ratio']):.2f}, reference masks "
              f"{min(flatness['reference_si_rl_extent_ratio']):.2f}-{max(flatness['reference_si_rl_extent_ratio']):.2f}")


if __name__ == "__main__":
    main()
