"""The model on Task02_Heart images whose header is corrected to show their anatomy, as a scan
straight from a scanner (correct DICOM geometry) would.

    .venv/bin/python bench/task02_anatomy.py ../shared/data/msd_heart [--model PATH | --run RUN_DIR] [--cases la_003 ...]

Task02_Heart's headers mislabel the axes: read in LPS as the header has it, the images run
posterior along x, inferior along y and to the patient's right along z (the header's "axial"
slices are anatomically sagittal; seen on the images: aortic arch at the top of those slices,
spine behind the heart, descending aorta to the left of the spine once corrected). The
networks learned bSSFP anatomy in that mislabelled frame. This benchmark gives each case the
direction its anatomy really has (``preprocessing.task02_header_corrected``: voxels unchanged, so the reference
mask applies as it is), runs the whole ``segment`` pipeline both ways and prints Dice, HD95 and
the volume error per case. With the bundled model every case is a training case, so the figures
as given are optimistic; the difference between the two columns is the point. With ``--run`` (a
``train --folds K`` run) each case that run held out is scored by its own fold's model: the
cross-validated figures of both presentations.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from LeftAtriumSegLib.io import read_mask
from LeftAtriumSegLib.metrics import segmentation_metrics
from LeftAtriumSegLib.pipeline import DEFAULT_MODEL_PATH, Segmenter
from LeftAtriumSegLib.preprocessing import task02_header_corrected
from LeftAtriumSegLib.training import Case, read_decathlon_cases


def case_models(cases: list[Case], args: argparse.Namespace) -> dict[str, Path]:
    """The model file to score each case with: the given one, or with ``--run`` the model of the
    fold that held the case out (cases it did not hold out are left out)."""
    if args.run is None:
        return {case.case_id: args.model for case in cases}
    folds = json.loads((args.run / "training.json").read_text(encoding="utf-8"))["folds"]
    return {case_id: args.run / f"fold_{index}" / "model.safetensors"
            for index, fold in enumerate(folds) for case_id in fold["validation"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data_dir", type=Path, help="Task02_Heart in the Decathlon layout")
    which_model = parser.add_mutually_exclusive_group()
    which_model.add_argument("--model", type=Path, default=DEFAULT_MODEL_PATH)
    which_model.add_argument("--run", type=Path, help="a `train --folds K` run: score each case it held out with its fold's model")
    parser.add_argument("--cases", nargs="+", help="case IDs (default: all)")
    args = parser.parse_args()
    cases = [case for case in read_decathlon_cases(args.data_dir) if not args.cases or case.case_id in args.cases]
    models = case_models(cases, args)
    segmenters: dict[Path, Segmenter] = {}
    print("Dice, HD95 (mm) and signed volume error (mL), segment's whole pipeline")
    print(f"{'case':10s} {'model':40s} {'as given':>24s} {'anatomical header':>24s}")
    scores: dict[str, list[tuple[float, float, float]]] = {"as given": [], "anatomical": []}
    for case in cases:
        if case.case_id not in models:
            continue
        if models[case.case_id] not in segmenters:
            segmenters[models[case.case_id]] = Segmenter.load(models[case.case_id], "cpu")
        segmenter = segmenters[models[case.case_id]]
        image = sitk.ReadImage(str(case.image_path))
        label = read_mask(case.label_path)
        cells = []
        for name, presented, reference in (("as given", sitk.DICOMOrient(image, "LPS"), sitk.DICOMOrient(label, "LPS")),
                                           ("anatomical", task02_header_corrected(image), task02_header_corrected(label))):
            metrics = segmentation_metrics(segmenter.segment(presented), sitk.GetArrayFromImage(reference) > 0,
                                           presented.GetSpacing())
            signed_ml = metrics["predicted_ml"] - metrics["reference_ml"]
            scores[name].append((metrics["dice"], metrics["hd95_mm"], signed_ml))
            cells.append(f"{metrics['dice']:.3f} {metrics['hd95_mm']:6.2f} {signed_ml:+7.1f}")
        model = models[case.case_id].parent.name if args.run else segmenter.model_label
        print(f"{case.case_id:10s} {model[:40]:40s} {cells[0]:>24s} {cells[1]:>24s}", flush=True)
    for name, values in scores.items():
        dice, hd95_mm, signed_ml = np.array(values).T
        print(f"{name}: mean Dice {dice.mean():.3f} (lowest {dice.min():.3f}), HD95 {hd95_mm.mean():.2f} mm, "
              f"absolute volume error {np.abs(signed_ml).mean():.2f} mL (signed {signed_ml.mean():+.2f})")


if __name__ == "__main__":
    main()
