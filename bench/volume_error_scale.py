"""How fine a boundary a volume-error target asks for, how far two reference masks of one image
disagree, and how much training's resampling of the masks changes their volume.

    .venv/bin/python bench/volume_error_scale.py DATA_DIR [--target-ml 3]

DATA_DIR is a Decathlon folder (``dataset.json``, ``imagesTr/``, ``labelsTr/``). For each
reference mask: its volume (mL) and surface area (cm2, marching cubes on the voxel grid, which
reads about 8% above the smooth surface: 1.08x for a voxelised sphere of radius 23 voxels), and
so how many mL a uniform shift of the whole boundary by 1 mm adds; a mean absolute volume error
of ``target-ml`` then stands for a mean boundary shift of target / (mL per mm); and the volume
change when training brings the mask into the model frame (``training.prepare_case``: linear
interpolation, cut at 0.5). Then, for each
image that carries two or more reference masks (la_005 and la_026 in msd_heart), the masks'
agreement: Dice, HD95, ASSD and volume difference, the same metrics a prediction gets.
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from LeftAtriumSegLib.metrics import segmentation_metrics
from LeftAtriumSegLib.io import read_mask
from LeftAtriumSegLib.model_file import ModelConfig
from LeftAtriumSegLib.training import case_groups, label_in_frame, read_decathlon_cases
from skimage import measure


def mask_array(mask: sitk.Image) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Boolean ``(Z, Y, X)`` array and its spacing in mm, (x, y, z) as the package's metrics take it."""
    return sitk.GetArrayViewFromImage(mask) > 0, mask.GetSpacing()


def surface_area_mm2(mask: np.ndarray, spacing_mm: tuple[float, float, float]) -> float:
    """Area of the 0.5 iso-surface of a ``(Z, Y, X)`` ``mask`` with (x, y, z) ``spacing_mm`` (padded so
    that it closes at the array's edge)."""
    vertices, faces, _, _ = measure.marching_cubes(np.pad(mask, 1).astype(np.float32), 0.5, spacing=spacing_mm[::-1])
    return float(measure.mesh_surface_area(vertices, faces))


def model_frame_volume_ml(mask: sitk.Image) -> float:
    """Volume of the mask as training prepares it (``training.prepare_case``)."""
    framed = label_in_frame(mask, ModelConfig().frame)
    return np.count_nonzero(sitk.GetArrayViewFromImage(framed) >= 0.5) * float(np.prod(framed.GetSpacing())) / 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("--target-ml", type=float, default=3.0)
    args = parser.parse_args()
    cases = read_decathlon_cases(args.data_dir)
    ml_per_mm, frame_change_ml = [], []
    print(f"{'case':24s} {'volume mL':>9s} {'area cm2':>8s} {'mL per mm':>9s} {f'{args.target_ml:g} mL as mm':>12s} "
          f"{'model frame mL':>14s}")
    for case in cases:
        mask_image = read_mask(case.label_path)
        mask, spacing_mm = mask_array(mask_image)
        volume_ml = np.count_nonzero(mask) * float(np.prod(spacing_mm)) / 1000
        area_mm2 = surface_area_mm2(mask, spacing_mm)
        ml_per_mm.append(area_mm2 / 1000)  # a shell of area A and thickness 1 mm holds A mm3
        frame_change_ml.append(model_frame_volume_ml(mask_image) - volume_ml)
        print(f"{case.case_id:24s} {volume_ml:9.1f} {area_mm2 / 100:8.0f} {ml_per_mm[-1]:9.1f} "
              f"{args.target_ml / ml_per_mm[-1]:12.2f} {frame_change_ml[-1]:+14.2f}")
    print(f"mean: {np.mean(ml_per_mm):.1f} mL per mm; {args.target_ml:g} mL stands for a mean boundary shift of "
          f"{np.mean(args.target_ml / np.array(ml_per_mm)):.2f} mm; in the model frame the masks change by "
          f"{np.mean(frame_change_ml):+.2f} mL ({min(frame_change_ml):+.2f} to {max(frame_change_ml):+.2f})")
    for group in case_groups(cases):
        for first, second in itertools.combinations(group, 2):
            mask_a, spacing_mm = mask_array(read_mask(first.label_path))
            mask_b, _ = mask_array(read_mask(second.label_path))
            agreement = segmentation_metrics(mask_a, mask_b, spacing_mm)
            print(f"one image, two reference masks: {first.case_id} vs {second.case_id}: Dice {agreement['dice']:.3f}, "
                  f"HD95 {agreement['hd95_mm']:.2f} mm, ASSD {agreement['assd_mm']:.2f} mm, "
                  f"{agreement['predicted_ml']:.1f} vs {agreement['reference_ml']:.1f} mL "
                  f"(difference {agreement['abs_volume_error_ml']:.1f} mL)")


if __name__ == "__main__":
    main()
