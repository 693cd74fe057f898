"""Where the volume errors of a cross-validation run sit: near the atrium's ends along each axis,
in its thin parts or its body, on its surface or deeper.

    .venv/bin/python bench/error_location.py PREDICTIONS REFERENCES [--end-fraction 0.2] [--thin-radius-mm 5]

PREDICTIONS and REFERENCES are either folders (held-out probability maps, as ``train --folds K``
writes them to RUN_DIR/probabilities, each cleaned with the default settings; and the labels) or
two mask files, the second scored against the first (la_005 and la_026 in msd_heart: one image,
two reference masks). Per case, in mL, with signed errors as prediction minus reference:

- missed (FN) and extra (FP) volume, and both at the ends along each axis of the LPS model frame:
  an end is the outer ``end-fraction`` of the reference's extent, at either side. The views'
  networks slice along these axes (axial: z, coronal: y, sagittal: x), so errors piled at one
  axis's ends point to the view that misses them.
- the signed error in the mask's thin parts against its body. The body is the mask opened with a
  ball of ``thin-radius-mm``, so the thin parts are the pulmonary veins, the appendage and other
  necks narrower than twice the radius: where an annotator chooses where the atrium stops. A
  missed voxel counts as thin if it lies in the reference's thin parts, an extra one if in the
  prediction's.
- the signed error in a shell within 1.5 mm (about a voxel) of the reference surface, against
  deeper: a whole surface placed a fraction of a voxel out or in, against slabs of atrium
  missed or added.

Summed over the cases: the share of the missed and extra volume at each axis's ends, beside
the share of the reference surface and of the reference's thin parts lying there (errors
spread evenly over the surface would match the first).
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from LeftAtriumSegLib.evaluation import files_by_case
from LeftAtriumSegLib.postprocessing import CleanupSettings, clean_mask, distance_mm
from scipy import ndimage

AXES = ("z", "y", "x")  # of an LPS array (Z, Y, X)
SHELL_MM = 1.5
SIGNED = ("signed", "thin", "body", "shell", "deep")  # the other columns are volumes


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


def thin_parts(mask: np.ndarray, spacing_mm: tuple[float, float, float], radius_mm: float) -> np.ndarray:
    """Voxels of a ``(Z, Y, X)`` ``mask`` that an opening with a ball of ``radius_mm`` removes
    (beyond the array counts as background)."""
    pad = [int(radius_mm // s) + 1 for s in spacing_mm[::-1]]
    padded = np.pad(mask, [(p, p) for p in pad])
    body = distance_mm(~padded, spacing_mm) > radius_mm  # the erosion,
    if body.any():
        body = distance_mm(body, spacing_mm) <= radius_mm  # then the dilation
    return mask & ~body[tuple(slice(p, -p) for p in pad)]


def error_split(predicted: np.ndarray, reference: np.ndarray, spacing_mm: tuple[float, float, float],
                end_fraction: float, thin_radius_mm: float) -> dict[str, float]:
    """The measures of the module docstring, in mL, for two boolean LPS ``(Z, Y, X)`` masks."""
    voxel_ml = float(np.prod(spacing_mm)) / 1000
    missed, added = reference & ~predicted, predicted & ~reference
    split = {"signed": (added.sum() - missed.sum()) * voxel_ml, "FN": missed.sum() * voxel_ml, "FP": added.sum() * voxel_ml}
    sampling = spacing_mm[::-1]
    near_outside = ndimage.distance_transform_edt(~reference, sampling=sampling) <= SHELL_MM
    near_inside = ndimage.distance_transform_edt(reference, sampling=sampling) <= SHELL_MM
    reference_thin = thin_parts(reference, spacing_mm, thin_radius_mm)
    split["surface"] = (reference & near_inside).sum() * voxel_ml
    split["reference thin"] = reference_thin.sum() * voxel_ml
    for axis, end in zip(AXES, end_masks(reference, end_fraction)):
        split[f"{axis} ends FN"] = (missed & end).sum() * voxel_ml
        split[f"{axis} ends FP"] = (added & end).sum() * voxel_ml
        split[f"{axis} ends surface"] = (reference & near_inside & end).sum() * voxel_ml
        split[f"{axis} ends reference thin"] = (reference_thin & end).sum() * voxel_ml
    thin = ((added & thin_parts(predicted, spacing_mm, thin_radius_mm)).sum() - (missed & reference_thin).sum()) * voxel_ml
    split["thin"], split["body"] = thin, split["signed"] - thin
    shell = ((added & near_outside).sum() - (missed & near_inside).sum()) * voxel_ml
    split["shell"], split["deep"] = shell, split["signed"] - shell
    return split


def lps_mask(image: sitk.Image) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Boolean LPS ``(Z, Y, X)`` array of a mask image and its spacing in mm, (x, y, z) in LPS."""
    oriented = sitk.DICOMOrient(image, "LPS")
    return sitk.GetArrayFromImage(oriented) > 0, oriented.GetSpacing()


def mask_pairs(predictions: Path, references: Path) -> Iterator[tuple[str, np.ndarray, np.ndarray, tuple[float, float, float]]]:
    """(case, predicted, reference, spacing_mm) for two mask files or two folders."""
    if predictions.is_file():
        reference, spacing_mm = lps_mask(sitk.ReadImage(str(references)))
        yield predictions.name, lps_mask(sitk.ReadImage(str(predictions)))[0], reference, spacing_mm
        return
    labels = files_by_case(references)
    for case, path in files_by_case(predictions).items():
        if case not in labels:  # a run over several data sets is scored one set at a time
            continue
        probability_map, label_image = sitk.ReadImage(str(path)), sitk.ReadImage(str(labels[case]))
        mask = clean_mask(sitk.GetArrayViewFromImage(probability_map), label_image.GetSpacing(), CleanupSettings())
        mask_image = sitk.GetImageFromArray(mask.astype(np.uint8))
        mask_image.CopyInformation(label_image)
        reference, spacing_mm = lps_mask(label_image)
        yield case, lps_mask(mask_image)[0], reference, spacing_mm


def crop_to_both(predicted: np.ndarray, reference: np.ndarray, margin: int) -> tuple[np.ndarray, np.ndarray]:
    """Both masks cut to their joint bounding box plus ``margin`` voxels (the openings and distances
    then cost a fraction of the whole volume's time and give the same result)."""
    indices = np.nonzero(predicted | reference)
    box = tuple(slice(max(int(i.min()) - margin, 0), int(i.max()) + margin + 1) for i in indices)
    return predicted[box], reference[box]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("predictions", type=Path)
    parser.add_argument("references", type=Path)
    parser.add_argument("--end-fraction", type=float, default=0.2)
    parser.add_argument("--thin-radius-mm", type=float, default=5.0)
    args = parser.parse_args()

    columns = ["signed", "FN", "FP", *(f"{a} ends {e}" for a in AXES for e in ("FN", "FP")), "thin", "body", "shell", "deep"]
    print(f"{'case':<24}" + "".join(f"{c:>11}" for c in columns))
    splits = []
    for case, predicted, reference, spacing_mm in mask_pairs(args.predictions, args.references):
        margin = int(np.ceil(max(args.thin_radius_mm, SHELL_MM) / min(spacing_mm))) + 1
        split = error_split(*crop_to_both(predicted, reference, margin), spacing_mm, args.end_fraction, args.thin_radius_mm)
        splits.append(split)
        print(f"{case:<24}" + "".join(f"{split[c]:>+11.1f}" if c in SIGNED else f"{split[c]:>11.1f}" for c in columns),
              flush=True)
    total = {key: sum(split[key] for split in splits) for key in splits[0]}
    print("share of the missed and extra volume at the ends (of the reference's surface; of its thin parts): " + ", ".join(
        f"{a} {(total[f'{a} ends FN'] + total[f'{a} ends FP']) / (total['FN'] + total['FP']):.0%} "
        f"({total[f'{a} ends surface'] / total['surface']:.0%}; {total[f'{a} ends reference thin'] / total['reference thin']:.0%})"
        for a in AXES))
    large = [split for split in splits if abs(split["signed"]) > 5]
    if len(splits) > 1 and large:
        print(f"cases with |signed| > 5 mL ({len(large)} of {len(splits)}), summed |mL|: "
              + ", ".join(f"{c} {sum(abs(split[c]) for split in large):.1f}" for c in ("thin", "body", "shell", "deep")))

if __name__ == "__main__":
    main()
