"""la2018_lge's slice spacing: what its masks' shapes say, and how the model does either way.

    .venv/bin/python bench/lge_slice_spacing.py ../shared/data/la2018_lge ../shared/data/msd_heart [--model PATH | --run RUN_DIR]

The release writes 0.625 mm between slices (the challenge's stated resolution, 0.625 mm
isotropic). Part 1 needs no model: it compares the shapes of la2018_lge's masks, read at the
stated spacing and at 1.25 mm between slices, with Task02_Heart's masks turned to their
anatomy (``datasets.task02_header_corrected``), as a control of known geometry:
- the median extent of the masks superior-inferior, anterior-posterior and right-left, and their
  median volume;
- near the atrium's right and left ends, where the pulmonary veins leave it, the cross-sections
  in sagittal planes: the ratio of their spread superior-inferior to their spread
  anterior-posterior (median per case, then over cases). A vein cut across is round, so the
  ratio is near 1 at the right spacing whatever the vein's size;
- against a template (the voxels inside at least half of Task02_Heart's turned masks, each centred
  on its centroid in the 1.25 mm LPS frame; for a Task02_Heart mask, the template of the other
  15): the mask's Dice as it lies, and in how many cases that beats each of the other 47 axis
  orders and flips of the frame (a mirrored or turned atrium would match better turned back).

Part 2 runs ``segment``'s whole pipeline on every la2018_lge case as given and with 1.25 mm
between slices, and prints Dice, HD95 and the signed volume error, each in its own presentation's
millilitres. With ``--run`` (a ``train --folds K`` run) each case that run held out is scored by its
own fold's model.
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from LeftAtriumSegLib.datasets import read_decathlon_cases, task02_header_corrected
from LeftAtriumSegLib.io import read_mask
from LeftAtriumSegLib.preprocessing import ModelFrame, to_model_frame
from skimage.measure import label, regionprops
from presentations import add_model_arguments, score_presentations

SCAN_SPACING_MM = (0.625, 0.625, 1.25)
VEIN_END_FRACTION = 0.12  # the outer share of the right-left extent, at either end
TEMPLATE_BOX = 112  # voxels of the 1.25 mm frame (140 mm) on each side of the centred masks
AXIS_ORDERS_AND_FLIPS = [(order, flips) for order in itertools.permutations(range(3))
                         for flips in itertools.product((False, True), repeat=3)]


def respaced(image: sitk.Image) -> sitk.Image:
    copy = sitk.Image(image)
    copy.SetSpacing(SCAN_SPACING_MM)
    return copy


def mask_shape(mask: sitk.Image) -> tuple[np.ndarray, float, float]:
    """Extents (superior-inferior, anterior-posterior, right-left; mm), volume (mL), and the median
    ratio of superior-inferior to anterior-posterior spread of the sagittal cross-sections near
    the right and left ends."""
    mask = sitk.DICOMOrient(mask, "LPS")
    inside = sitk.GetArrayFromImage(mask) > 0
    spacing_zyx = np.array(mask.GetSpacing())[::-1]
    voxels = np.argwhere(inside)
    extents_mm = (voxels.max(0) - voxels.min(0) + 1) * spacing_zyx
    first_x, last_x = voxels[:, 2].min(), voxels[:, 2].max()
    end = int(VEIN_END_FRACTION * (last_x - first_x))
    log_ratios = []
    for x in [*range(first_x + 1, first_x + end), *range(last_x - end, last_x)]:
        for region in regionprops(label(inside[:, :, x])):
            spread_z, spread_y = (region.coords * spacing_zyx[:2]).std(axis=0)
            if region.area >= 8 and spread_z > 0 and spread_y > 0:
                log_ratios.append(np.log(spread_z / spread_y))
    return extents_mm, inside.sum() * spacing_zyx.prod() / 1000, float(np.exp(np.median(log_ratios)))


def centred_in_frame(mask: sitk.Image) -> np.ndarray:
    """The mask in the 1.25 mm LPS frame, in a ``TEMPLATE_BOX`` cube centred on its centroid."""
    inside = sitk.GetArrayFromImage(to_model_frame(sitk.Cast(mask > 0, sitk.sitkFloat32), ModelFrame())) >= 0.5
    centre = np.round(np.argwhere(inside).mean(axis=0)).astype(int) + TEMPLATE_BOX
    start, stop = centre - TEMPLATE_BOX // 2, centre + TEMPLATE_BOX // 2
    return np.pad(inside, TEMPLATE_BOX)[start[0]:stop[0], start[1]:stop[1], start[2]:stop[2]]


def template_match(mask: np.ndarray, template: np.ndarray) -> tuple[float, bool]:
    """Dice of ``mask`` with ``template`` as it lies, and whether that beats every other axis
    order and flip."""
    def dice(moved: np.ndarray) -> float:
        return 2 * (moved & template).sum() / (moved.sum() + template.sum())
    as_it_lies = dice(mask)
    others = [dice(np.flip(mask.transpose(order), [axis for axis, flip in enumerate(flips) if flip]))
              for order, flips in AXIS_ORDERS_AND_FLIPS[1:]]
    return as_it_lies, as_it_lies > max(others)


def print_shapes(lge_dir: Path, msd_dir: Path) -> None:
    lge_masks = [read_mask(case.label_path) for case in read_decathlon_cases(lge_dir)]
    presentations = {
        "msd_heart, headers corrected": [task02_header_corrected(read_mask(case.label_path))
                                         for case in read_decathlon_cases(msd_dir)],
        "la2018_lge as given": lge_masks,
        "la2018_lge, 1.25 mm slices": [respaced(mask) for mask in lge_masks],
    }
    controls = [centred_in_frame(mask) for mask in presentations["msd_heart, headers corrected"]]
    print("Masks' shapes (medians over cases): extent superior-inferior / anterior-posterior / right-left (mm), "
          "volume (mL), vein cross-sections' superior-inferior to anterior-posterior spread; Dice with the "
          "template as the mask lies, and the cases where that beats the other 47 axis orders and flips")
    for name, masks in presentations.items():
        extents, volumes, ratios = zip(*(mask_shape(mask) for mask in masks))
        si, ap, rl = np.median(extents, axis=0)
        if name.startswith("msd_heart"):
            matches = [template_match(control, np.mean(controls[:index] + controls[index + 1:], axis=0) >= 0.5)
                       for index, control in enumerate(controls)]
        else:
            template = np.mean(controls, axis=0) >= 0.5
            matches = [template_match(centred_in_frame(mask), template) for mask in masks]
        dice, best = zip(*matches)
        print(f"{name:30s} {si:6.1f} {ap:6.1f} {rl:6.1f}   {np.median(volumes):6.1f} mL   ratio {np.median(ratios):.2f} "
              f"(quartiles {np.percentile(ratios, 25):.2f}-{np.percentile(ratios, 75):.2f})   template Dice "
              f"{np.median(dice):.3f}, best as it lies in {sum(best)} of {len(masks)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("lge_dir", type=Path, help="la2018_lge in the Decathlon layout")
    parser.add_argument("msd_dir", type=Path, help="Task02_Heart in the Decathlon layout (the shapes' control)")
    add_model_arguments(parser)
    parser.add_argument("--shapes-only", action="store_true", help="part 1 only")
    args = parser.parse_args()
    print_shapes(args.lge_dir, args.msd_dir)
    if not args.shapes_only:
        print()
        score_presentations(read_decathlon_cases(args.lge_dir), args, {"as given": sitk.Image, "1.25 mm slices": respaced})


if __name__ == "__main__":
    main()
