"""Does the image tell where the atrium's surface belongs? For each held-out case: where the
reference's and the prediction's surfaces sit between the local wall and blood-pool intensities,
and the volume error after moving the predicted surface to a fixed intensity level.

    .venv/bin/python bench/boundary_intensity.py PROBABILITY_DIR DATA_DIR [--levels 0.4 0.5 0.6]

PROBABILITY_DIR holds held-out probability maps (``train --folds K`` writes them to
RUN_DIR/probabilities); the cases that DATA_DIR labels are scored. DATA_DIR is a Decathlon folder (``imagesTr/``, ``labelsTr/``). Each map
is cleaned with the default settings. The intensity "level" of a voxel is
(intensity - wall) / (blood - wall), where blood and wall are Gaussian-weighted (10 mm) local
means over the masks' eroded interior and over a ring 2-3 voxels outside them: 1 is blood pool,
0 is wall (both masks for measuring the surfaces, the prediction alone for re-cutting it). A surface's level is the median over the mask's outermost voxel layer. If annotators
drew the surface at one level and the model did not, the reference's level would stay put from
case to case while the prediction's wandered, and re-cutting the prediction's surface at that
level (each voxel within one voxel of it kept where its level is at least the cut) would remove
the volume error; the printout says how far that holds. The model of a dark wall around a
bright blood pool fits bright-blood images (msd_heart's bSSFP), not late-enhancement ones, where
the wall itself may enhance.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from LeftAtriumSegLib.evaluation import files_by_case
from LeftAtriumSegLib.metrics import dice
from LeftAtriumSegLib.postprocessing import CleanupSettings, clean_mask
from scipy import ndimage

FACE_NEIGHBOURS = ndimage.generate_binary_structure(3, 1)


def intensity_level(image: np.ndarray, masks: list[np.ndarray], spacing_zyx_mm: np.ndarray,
                    sigma_mm: float = 10.0) -> np.ndarray:
    """Each voxel's intensity between the local wall (0) and blood pool (1) around ``masks``;
    NaN where the wall is not darker than the blood pool, so there is no edge to place."""
    union = np.logical_or.reduce(masks)
    interior = ndimage.binary_erosion(np.logical_and.reduce(masks), FACE_NEIGHBOURS, iterations=2)
    ring = (ndimage.binary_dilation(union, FACE_NEIGHBOURS, iterations=3)
            & ~ndimage.binary_dilation(union, FACE_NEIGHBOURS, iterations=1))

    def local_mean(where: np.ndarray) -> np.ndarray:
        sigma = sigma_mm / spacing_zyx_mm
        weight = ndimage.gaussian_filter(where.astype(np.float32), sigma)
        return ndimage.gaussian_filter(image * where, sigma) / np.maximum(weight, 1e-6)

    blood, wall = local_mean(interior), local_mean(ring)
    contrast = blood - wall
    return np.where(contrast > 0, (image - wall) / np.where(contrast > 0, contrast, 1), np.nan)


def surface_level(level: np.ndarray, mask: np.ndarray) -> float:
    outer_layer = mask & ~ndimage.binary_erosion(mask, FACE_NEIGHBOURS)
    return float(np.nanmedian(level[outer_layer]))


def recut_surface(mask: np.ndarray, level: np.ndarray, cut: float) -> np.ndarray:
    """Voxels within one voxel of the surface kept where their level is at least ``cut``
    (and as they were where the level is undefined)."""
    band = (ndimage.binary_dilation(mask, FACE_NEIGHBOURS)
            & ~ndimage.binary_erosion(mask, FACE_NEIGHBOURS))
    inside = np.where(np.isnan(level), mask, level >= cut)
    return ndimage.binary_fill_holes((mask & ~band) | (band & inside))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("probabilities", type=Path)
    parser.add_argument("data", type=Path)
    parser.add_argument("--levels", type=float, nargs="+", default=[0.4, 0.5, 0.6])
    args = parser.parse_args()

    labels = files_by_case(args.data / "labelsTr")
    images = files_by_case(args.data / "imagesTr")
    variants = ["network"] + [f"cut {cut}" for cut in args.levels]
    print(f"{'case':<22}{'ref mL':>8}{'ref level':>11}{'pred level':>12}"
          + "".join(f"{f'dV {v}':>15}" for v in variants))
    rows = []
    probability_maps = files_by_case(args.probabilities)
    for case in sorted(probability_maps.keys() & labels.keys()):
        label_image = sitk.ReadImage(str(labels[case]))
        reference = sitk.GetArrayFromImage(label_image) > 0
        image = sitk.GetArrayFromImage(sitk.ReadImage(str(images[case]))).astype(np.float32)
        spacing_zyx_mm = np.array(label_image.GetSpacing()[::-1])
        voxel_ml = float(np.prod(spacing_zyx_mm)) / 1000
        probability_map = sitk.GetArrayFromImage(sitk.ReadImage(str(probability_maps[case])))
        predicted = clean_mask(probability_map, label_image.GetSpacing(), CleanupSettings())
        # both surfaces are measured on one scale; the re-cut may use the prediction alone
        level = intensity_level(image, [reference, predicted], spacing_zyx_mm)
        level_from_prediction = intensity_level(image, [predicted], spacing_zyx_mm)
        masks = [predicted] + [recut_surface(predicted, level_from_prediction, cut) for cut in args.levels]
        reference_ml = reference.sum() * voxel_ml
        errors_ml = [m.sum() * voxel_ml - reference_ml for m in masks]
        rows.append((surface_level(level, reference), [dice(m, reference) for m in masks], errors_ml))
        print(f"{case:<22}{reference_ml:>8.1f}{rows[-1][0]:>11.2f}{surface_level(level, predicted):>12.2f}"
              + "".join(f"{e:>+15.1f}" for e in errors_ml))

    reference_levels = np.array([r[0] for r in rows])
    dices, errors = np.array([r[1] for r in rows]), np.array([r[2] for r in rows])
    known = ~np.isnan(reference_levels)
    print(f"reference surface level: mean {reference_levels[known].mean():.2f}, sd {reference_levels[known].std():.3f}; "
          f"its correlation with the network's signed error: "
          f"{np.corrcoef(reference_levels[known], errors[known, 0])[0, 1]:.2f}")
    for i, variant in enumerate(variants):
        print(f"{variant:<10} mean Dice {dices[:, i].mean():.4f} (lowest {dices[:, i].min():.3f}), "
              f"abs. volume error {np.abs(errors[:, i]).mean():.2f} mL, signed {errors[:, i].mean():+.2f} mL")


if __name__ == "__main__":
    main()
