"""Score a cross-validation run with the shipped inference code; print the model card's tables,
its cleanup ablation among them.

    .venv/bin/python bench/cross_validation.py RUN_DIR DATA_DIR [--output REPORT.md]

RUN_DIR is the output of ``leftatriumseg train --folds K``: its ``training.json`` says which
cases each fold held out, ``fold_K/model.safetensors`` is that fold's model. Every held-out
case of DATA_DIR is segmented by its own fold's model through ``inference.predict`` (as
``segment`` does); the probability maps go to RUN_DIR/probabilities, the per-case metrics
with the default cleanup and the cleanup ablation are printed as Markdown. A run trained on
several data sets is scored one set at a time: run this once per DATA_DIR.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from LeftAtriumSegLib.evaluation import METRIC_COLUMNS, ablation_variants, cleanup_ablation, held_out_cases
from LeftAtriumSegLib.inference import predict
from LeftAtriumSegLib.metrics import bland_altman, segmentation_metrics
from LeftAtriumSegLib.postprocessing import CleanupSettings, clean_mask


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("--output", type=Path, help="also write the Markdown here")
    parser.add_argument("--reuse-probabilities", action="store_true",
                        help="score the probability maps a previous run of this script wrote, without inference")
    args = parser.parse_args()

    probability_dir = args.run_dir / "probabilities"
    probability_dir.mkdir(exist_ok=True)
    defaults = CleanupSettings()
    rows = []
    for index, case, image, label, (networks, config) in held_out_cases(args.run_dir, args.data_dir):
        start = time.perf_counter()
        if args.reuse_probabilities:
            probability_map = sitk.ReadImage(str(probability_dir / f"{case}.nii.gz"))
        else:
            probability_map = predict(image, networks, config).probability_map
        mask = clean_mask(sitk.GetArrayViewFromImage(probability_map), image.GetSpacing(), defaults)
        seconds = time.perf_counter() - start
        if not args.reuse_probabilities:
            sitk.WriteImage(probability_map, str(probability_dir / f"{case}.nii.gz"), useCompression=True)
        metrics = segmentation_metrics(mask, sitk.GetArrayViewFromImage(label) > 0, image.GetSpacing())
        rows.append({"case": case, "fold": index, **metrics, "seconds": seconds})
        print(f"fold {index} {case}: Dice {metrics['dice']:.4f}", flush=True)

    lines = ["| case | fold | Dice | HD95 mm | ASSD mm | reference mL | predicted mL | abs. volume error mL |",
             "|---|---|---|---|---|---|---|---|"]
    for row in sorted(rows, key=lambda r: r["case"]):
        lines.append(f"| {row['case']} | {row['fold']} | {row['dice']:.3f} | {row['hd95_mm']:.2f} | {row['assd_mm']:.2f} "
                     f"| {row['reference_ml']:.1f} | {row['predicted_ml']:.1f} | {row['abs_volume_error_ml']:.2f} |")
    mean = {key: float(np.mean([r[key] for r in rows])) for key in (*METRIC_COLUMNS, "reference_ml", "predicted_ml")}
    lines.append(f"| **mean** | | **{mean['dice']:.3f}** | **{mean['hd95_mm']:.2f}** | **{mean['assd_mm']:.2f}** "
                 f"| {mean['reference_ml']:.1f} | {mean['predicted_ml']:.1f} | **{mean['abs_volume_error_ml']:.2f}** |")
    agreement = bland_altman([r["predicted_ml"] for r in rows], [r["reference_ml"] for r in rows])
    lines.append(f"\nBland-Altman: bias {agreement['bias_ml']:+.2f} mL, 95% limits of agreement {agreement['lower_ml']:+.1f} to "
                 f"{agreement['upper_ml']:+.1f} mL; in % of the reference volume: bias {agreement['bias_pct']:+.1f}%, "
                 f"limits {agreement['lower_pct']:+.1f}% to {agreement['upper_pct']:+.1f}%, mean absolute error "
                 f"{agreement['mae_pct']:.1f}% ({agreement['mae_ml']:.2f} mL).")
    timing = "cleanup" if args.reuse_probabilities else "inference + cleanup"
    lines.append(f"\nMinimum Dice {min(r['dice'] for r in rows):.3f}; median {timing} "
                 f"{np.median([r['seconds'] for r in rows]):.1f} s per case (in this process).\n")

    ablation = cleanup_ablation(probability_dir, args.data_dir / "labelsTr", ablation_variants(defaults))
    lines += ["| cleanup variant | mean Dice | min Dice | HD95 mm | abs. volume error mL |", "|---|---|---|---|---|"]
    lines += [f"| {r['variant']} | {r['dice']:.4f} | {r['min_dice']:.4f} | {r['hd95_mm']:.2f} | {r['abs_volume_error_ml']:.2f} |"
              for r in ablation]
    report = "\n".join(lines)
    print(report)
    if args.output:
        args.output.write_text(report + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
