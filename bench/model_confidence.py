"""Can the model's own probabilities give a better volume, or say which cases' volumes are off?

    .venv/bin/python bench/model_confidence.py PROBABILITY_DIR LABELS_DIR [--band 0.3 0.7]

PROBABILITY_DIR holds held-out probability maps (``train --folds K`` writes them to
RUN_DIR/probabilities); the cases that LABELS_DIR labels are scored. Per case, against the
reference volume:
- the shipped volume: the map cleaned with the default settings, voxels counted;
- the expected volume: the sum of the probabilities times the voxel volume, which counts a
  voxel at p = 0.3 as 0.3 of a voxel instead of none;
- the uncertain volume: voxels whose probability lies in the band (default 0.3 <= p < 0.7).
If the networks were less sure where their volumes are wrong, the uncertain volume would grow
with the absolute volume error, and could tell a user which cases to review first; the printout
gives the correlations (Pearson, and Spearman's on ranks, which one outlying case cannot carry).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from LeftAtriumSegLib.evaluation import files_by_case
from LeftAtriumSegLib.measurements import measure_volume
from LeftAtriumSegLib.postprocessing import CleanupSettings, clean_mask
from scipy import stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("probability_dir", type=Path)
    parser.add_argument("labels_dir", type=Path)
    parser.add_argument("--band", nargs=2, type=float, default=(0.3, 0.7), metavar=("LOW", "HIGH"))
    args = parser.parse_args()
    low, high = args.band
    maps, labels = files_by_case(args.probability_dir), files_by_case(args.labels_dir)
    cases = sorted(maps.keys() & labels.keys())

    rows = []  # reference, shipped, expected, uncertain: mL
    for case in cases:
        label = sitk.ReadImage(str(labels[case]))
        spacing_mm = label.GetSpacing()
        probability = sitk.GetArrayFromImage(sitk.ReadImage(str(maps[case])))
        mask = clean_mask(probability, spacing_mm, CleanupSettings())
        rows.append((
            measure_volume(sitk.GetArrayViewFromImage(label), spacing_mm).volume_ml,
            measure_volume(mask, spacing_mm).volume_ml,
            float(probability.sum(dtype=np.float64)) * np.prod(spacing_mm) / 1000.0,
            measure_volume((probability >= low) & (probability < high), spacing_mm).volume_ml,
        ))
    reference_ml, shipped_ml, expected_ml, uncertain_ml = np.array(rows).T

    print(f"| case | reference mL | shipped mL | expected mL | uncertain mL ({low} <= p < {high}) |")
    print("|---|---|---|---|---|")
    for case, row in zip(cases, rows, strict=True):
        print(f"| {case} | " + " | ".join(f"{value:.1f}" for value in row) + " |")
    shipped_error_ml = np.abs(shipped_ml - reference_ml)
    print(f"\n{len(cases)} cases. Mean absolute volume error: shipped {shipped_error_ml.mean():.2f} mL, "
          f"expected {np.abs(expected_ml - reference_ml).mean():.2f} mL "
          f"(mean signed {np.mean(expected_ml - reference_ml):+.2f} mL).")
    print(f"Uncertain volume against the shipped absolute volume error: Pearson "
          f"{stats.pearsonr(uncertain_ml, shipped_error_ml)[0]:.2f}, Spearman "
          f"{stats.spearmanr(uncertain_ml, shipped_error_ml)[0]:.2f}; as a share of the shipped volume: "
          f"Spearman {stats.spearmanr(uncertain_ml / shipped_ml, shipped_error_ml)[0]:.2f}.")


if __name__ == "__main__":
    main()
