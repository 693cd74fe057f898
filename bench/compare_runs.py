"""Score several cross-validation runs' held-out probability maps, each alone and averaged.

    .venv/bin/python bench/compare_runs.py DATA_DIR NAME=RUN_DIR [NAME=RUN_DIR ...]

Each RUN_DIR holds ``probabilities/CASE.nii.gz``, as ``leftatriumseg train --folds K`` and
``bench/cross_validation.py`` write them; DATA_DIR is the Decathlon folder with ``labelsTr/``
(runs trained on several data sets are scored on DATA_DIR's cases only).
Prints, per case, the Dice and the signed volume error (prediction minus reference, mL) of
each run's maps and of the mean of all runs' maps, cleaned up with the defaults; then how often
the runs agree on the sign of a case's volume error, and how their signed errors correlate.
Runs that share no network (one per view, say) yet err the same way on a case point at the
case (its image or its reference mask) rather than at any one network.
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from LeftAtriumSegLib.evaluation import files_by_case
from LeftAtriumSegLib.metrics import segmentation_metrics
from LeftAtriumSegLib.postprocessing import CleanupSettings, clean_mask


def named_run(text: str) -> tuple[str, Path]:
    name, separator, folder = text.partition("=")
    if not separator or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=RUN_DIR, got {text!r}")
    return name, Path(folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("runs", nargs="+", type=named_run, metavar="NAME=RUN_DIR")
    args = parser.parse_args()
    runs = dict(args.runs)
    columns = [*runs, "mean of maps"]
    maps_by_run = [files_by_case(folder / "probabilities") for folder in runs.values()]
    labels = files_by_case(args.data_dir / "labelsTr")
    cases = sorted(labels.keys() & maps_by_run[0].keys())  # a run over several data sets: this set's cases

    dice = np.empty((len(cases), len(columns)))
    volume_error_ml = np.empty((len(cases), len(columns)))  # signed: prediction - reference
    for row, case in enumerate(cases):
        label = sitk.ReadImage(str(labels[case]))
        reference = sitk.GetArrayViewFromImage(label) > 0
        maps = [sitk.GetArrayFromImage(sitk.ReadImage(str(run_maps[case]))) for run_maps in maps_by_run]
        for column, probability in enumerate([*maps, np.mean(maps, axis=0)]):
            mask = clean_mask(probability, label.GetSpacing(), CleanupSettings())
            metrics = segmentation_metrics(mask, reference, label.GetSpacing())
            dice[row, column] = metrics["dice"]
            volume_error_ml[row, column] = metrics["predicted_ml"] - metrics["reference_ml"]

    print("| case | " + " | ".join(f"{name} Dice" for name in columns) + " | "
          + " | ".join(f"{name} volume error mL" for name in columns) + " |")
    print("|---" * (1 + 2 * len(columns)) + "|")
    for row, case in enumerate(cases):
        print(f"| {case} | " + " | ".join(f"{value:.3f}" for value in dice[row]) + " | "
              + " | ".join(f"{value:+.1f}" for value in volume_error_ml[row]) + " |")
    print("| **mean** | " + " | ".join(f"{value:.3f}" for value in dice.mean(0)) + " | "
          + " | ".join(f"abs. {value:.2f}" for value in np.abs(volume_error_ml).mean(0)) + " |")
    print()
    print("Minimum Dice: " + ", ".join(f"{name} {value:.3f}" for name, value in zip(columns, dice.min(0))))

    if len(runs) > 1:
        per_run = volume_error_ml[:, : len(runs)]
        same_sign = (np.all(per_run > 0, axis=1) | np.all(per_run < 0, axis=1))
        large = np.abs(volume_error_ml[:, -1]) > 5
        print(f"All runs err in the same direction on {same_sign.sum()} of {len(cases)} cases; "
              f"on {(same_sign & large).sum()} of the {large.sum()} cases whose mean-of-maps error exceeds 5 mL.")
        for (first, a), (second, b) in itertools.combinations(zip(runs, per_run.T), 2):
            print(f"Correlation of signed volume errors, {first} vs {second}: {np.corrcoef(a, b)[0, 1]:.2f}")


if __name__ == "__main__":
    main()
