"""Training targets in the model frame: the 0.5 cut that ``training.prepare_case`` applies, or the
interpolated fraction kept until after augmentation.

    .venv/bin/python bench/label_targets.py ../shared/data/msd_heart ../shared/data/la2018_lge \
        [--view axial] [--fold 0] [--iterations 4800]

Why: bringing a mask into the model frame interpolates it linearly; la2018_lge's masks are
0.625 mm and the frame 1.25 mm, so many frame voxels sit exactly half inside, and ``>= 0.5``
counts them all: the training masks grow by 2.0 mL (3.8%) on average
(``bench/volume_error_scale.py ../shared/data/la2018_lge``). Kept as a fraction, the cut
happens after ``sample_batch``'s random rotation and scaling, where exact halves are rare.

Trains one view's network on the other folds' cases twice, identical but for the targets
(same seed, same settings as the shipped model), then scores each network alone on the fold's
held-out cases, on their own grids with the default cleanup: Dice and signed volume error
(prediction minus reference, mL) per case and per data set. About 18 minutes per network on
this project's 2-core CPU (1,074 and 1,016 s).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from LeftAtriumSegLib.inference import predict_probability_map
from LeftAtriumSegLib.metrics import segmentation_metrics
from LeftAtriumSegLib.model_file import ModelConfig
from LeftAtriumSegLib.postprocessing import CleanupSettings, clean_mask
from LeftAtriumSegLib.preprocessing import normalise_intensity, to_model_frame
from LeftAtriumSegLib.training import (
    Case,
    PreparedCase,
    TrainingSettings,
    label_in_frame,
    make_folds,
    prepare_case,
    read_decathlon_cases,
    train_network,
)


def prepare_case_fraction(case: Case, config: ModelConfig) -> PreparedCase:
    """As ``prepare_case``, but the label is the interpolated fraction (float32, 0-1)."""
    image = to_model_frame(sitk.ReadImage(str(case.image_path)), config.frame)
    return PreparedCase(case.case_id, normalise_intensity(sitk.GetArrayViewFromImage(image)),
                        sitk.GetArrayFromImage(label_in_frame(case.label_path, config.frame)).clip(0, 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", nargs="+", type=Path)
    parser.add_argument("--view", default="axial")
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--iterations", type=int, default=TrainingSettings().iterations)
    args = parser.parse_args()
    config = ModelConfig()
    settings = TrainingSettings(iterations=args.iterations)
    cases = [case for folder in args.data for case in read_decathlon_cases(folder)]
    held_out = make_folds(cases, 4, settings.seed)[args.fold]
    held_out_ids = {case.case_id for case in held_out}
    training_cases = [case for case in cases if case.case_id not in held_out_ids]
    cleanup, rows = CleanupSettings(), {}
    for name, prepare in (("cut at 0.5", prepare_case), ("fraction", prepare_case_fraction)):
        start = time.perf_counter()
        prepared = [prepare(case, config) for case in training_cases]
        network = train_network(prepared, config, settings, args.view, description=name)
        print(f"{name}: trained in {time.perf_counter() - start:.0f} s", flush=True)
        for case in held_out:
            image, reference = sitk.ReadImage(str(case.image_path)), sitk.ReadImage(str(case.label_path))
            probability = predict_probability_map(image, {args.view: network}, config)
            spacing_mm = image.GetSpacing()  # (x, y, z), as clean_mask and the metrics take it
            mask = clean_mask(sitk.GetArrayFromImage(probability), spacing_mm, cleanup)
            metrics = segmentation_metrics(mask, sitk.GetArrayViewFromImage(reference) > 0, spacing_mm)
            rows.setdefault(case.case_id, {})[name] = metrics
    names = ("cut at 0.5", "fraction")
    print(f"\nfold {args.fold}, view {args.view}, {args.iterations} iterations; Dice and signed volume error (mL)")
    print(f"{'case':24s} " + " ".join(f"{n:>20s}" for n in names))
    for case_id, by_name in rows.items():
        print(f"{case_id:24s} " + " ".join(
            f"{by_name[n]['dice']:9.3f} {by_name[n]['predicted_ml'] - by_name[n]['reference_ml']:+10.1f}" for n in names))
    for folder in args.data:
        ids = {case.case_id for case in read_decathlon_cases(folder)} & held_out_ids
        for n in names:
            chosen = [rows[case_id][n] for case_id in ids]
            signed = [m["predicted_ml"] - m["reference_ml"] for m in chosen]
            print(f"{folder.name} ({len(ids)} cases), {n}: Dice {np.mean([m['dice'] for m in chosen]):.3f}, "
                  f"signed volume error {np.mean(signed):+.2f} mL, absolute {np.mean(np.abs(signed)):.2f} mL")


if __name__ == "__main__":
    main()
