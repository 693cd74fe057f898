"""The model on Task02_Heart images whose header is corrected to show their anatomy, as a scan
straight from a scanner (correct DICOM geometry) would.

    .venv/bin/python bench/task02_anatomy.py ../shared/data/msd_heart [--model PATH] [--cases la_003 ...]

Task02_Heart's headers mislabel the axes: read in LPS as the header has it, the images run
posterior along x, inferior along y and to the patient's right along z (the header's "axial"
slices are anatomically sagittal; seen on the images: aortic arch at the top of those slices,
spine behind the heart, descending aorta to the left of the spine once corrected). The
networks learned bSSFP anatomy in that mislabelled frame. This benchmark gives each case the
direction its anatomy really has (``preprocessing.TASK02_HEART_ANATOMY_DIRECTION``: voxels unchanged, so the reference
mask applies as it is), runs the whole ``segment`` pipeline both ways and prints Dice and the
volume error per case. With the bundled model every case is a training case, so the figures as
given are optimistic; the difference between the two columns is the point.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from LeftAtriumSegLib.io import read_mask
from LeftAtriumSegLib.metrics import segmentation_metrics
from LeftAtriumSegLib.pipeline import DEFAULT_MODEL_PATH, Segmenter
from LeftAtriumSegLib.preprocessing import TASK02_HEART_ANATOMY_DIRECTION
from LeftAtriumSegLib.training import read_decathlon_cases


def anatomical(image: sitk.Image) -> sitk.Image:
    """``image`` (a Task02_Heart image reoriented to LPS) with the direction of its anatomy."""
    corrected = sitk.Image(image)
    corrected.SetDirection(TASK02_HEART_ANATOMY_DIRECTION.ravel().tolist())
    return corrected


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data_dir", type=Path, help="Task02_Heart in the Decathlon layout")
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL_PATH)
    parser.add_argument("--cases", nargs="+", help="case IDs (default: all)")
    args = parser.parse_args()
    segmenter = Segmenter.load(args.model, "cpu")
    cases = [case for case in read_decathlon_cases(args.data_dir) if not args.cases or case.case_id in args.cases]
    print(f"{segmenter.model_label}; Dice and signed volume error (mL), segment's whole pipeline")
    print(f"{'case':10s} {'as given':>18s} {'anatomical header':>22s}")
    scores: dict[str, list[tuple[float, float]]] = {"as given": [], "anatomical": []}
    for case in cases:
        image = sitk.DICOMOrient(sitk.ReadImage(str(case.image_path)), "LPS")
        reference = sitk.GetArrayFromImage(sitk.DICOMOrient(read_mask(case.label_path), "LPS")) > 0
        cells = []
        for name, presented in (("as given", image), ("anatomical", anatomical(image))):
            metrics = segmentation_metrics(segmenter.segment(presented), reference, presented.GetSpacing())
            signed_ml = metrics["predicted_ml"] - metrics["reference_ml"]
            scores[name].append((metrics["dice"], signed_ml))
            cells.append(f"{metrics['dice']:.3f} {signed_ml:+7.1f}")
        print(f"{case.case_id:10s} {cells[0]:>18s} {cells[1]:>22s}", flush=True)
    for name, values in scores.items():
        dice, signed_ml = np.array(values).T
        print(f"{name}: mean Dice {dice.mean():.3f} (lowest {dice.min():.3f}), "
              f"absolute volume error {np.abs(signed_ml).mean():.2f} mL")


if __name__ == "__main__":
    main()
