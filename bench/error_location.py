"""Where the errors of a cross-validation run sit: false-negative and false-positive mL near the
ends of the atrium along each axis of the model frame.

    .venv/bin/python bench/error_location.py PROBABILITY_DIR LABEL_DIR [--end-fraction 0.2]

PROBABILITY_DIR holds held-out probability maps (``train --folds K`` writes them to
RUN_DIR/probabilities); each is cleaned with the default settings and compared with its label,
both reoriented to LPS. An "end" is the outer ``end-fraction`` of the label's extent along an
axis, at either side. The views' networks slice along these axes (axial: z, coronal: y,
sagittal: x), so errors piled at one axis's ends point to the view that misses them.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from LeftAtriumSegLib.evaluation import files_by_case
from LeftAtriumSegLib.postprocessing import CleanupSettings, clean_mask

AXES = ("z", "y", "x")  # of an LPS array (Z, Y, X)


def end_masks(label: np.ndarray, end_fraction: float) -> list[np.ndarray]:
    """For each axis, a boolean array broadcastable to ``label``: the outer slabs of its extent."""
    masks = []
    for axis in range(3):
        present = np.flatnonzero(label.any(axis=tuple(a for a in range(3) if a != axis)))
        span = present[-1] - present[0] + 1
        coordinate = np.arange(label.shape[axis])
        at_end = (coordinate < present[0] + end_fraction * span) | (coordinate > present[-1] - end_fraction * span)
        shape = [1, 1, 1]
        shape[axis] = -1
        masks.append(at_end.reshape(shape))
    return masks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("probabilities", type=Path)
    parser.add_argument("labels", type=Path)
    parser.add_argument("--end-fraction", type=float, default=0.2)
    args = parser.parse_args()

    labels = files_by_case(args.labels)
    totals = np.zeros((3, 2))
    print(f"{'case':<10}{'FN mL':>8}{'FP mL':>8}" + "".join(f"{f'{a}-ends FN/FP':>18}" for a in AXES))
    for case, path in files_by_case(args.probabilities).items():
        probability_map, label_image = sitk.ReadImage(str(path)), sitk.ReadImage(str(labels[case]))
        mask = clean_mask(sitk.GetArrayViewFromImage(probability_map), label_image.GetSpacing(), CleanupSettings())
        mask_image = sitk.GetImageFromArray(mask.astype(np.uint8))
        mask_image.CopyInformation(label_image)
        predicted = sitk.GetArrayFromImage(sitk.DICOMOrient(mask_image, "LPS")) > 0
        reference = sitk.GetArrayFromImage(sitk.DICOMOrient(label_image, "LPS")) > 0
        voxel_ml = float(np.prod(label_image.GetSpacing())) / 1000
        missed, added = reference & ~predicted, predicted & ~reference
        at_ends = [((missed & end).sum() * voxel_ml, (added & end).sum() * voxel_ml)
                   for end in end_masks(reference, args.end_fraction)]
        totals += np.array(at_ends)
        print(f"{case:<10}{missed.sum() * voxel_ml:>8.1f}{added.sum() * voxel_ml:>8.1f}"
              + "".join(f"{f'{fn:.1f} / {fp:.1f}':>18}" for fn, fp in at_ends))
    print("summed over cases, FN + FP mL at the ends: "
          + ", ".join(f"{axis} {fn + fp:.0f}" for axis, (fn, fp) in zip(AXES, totals)))


if __name__ == "__main__":
    main()
