"""How Dice depends on the field of view: held-out cases cropped in-plane around the atrium.

    .venv/bin/python bench/field_of_view.py RUN_DIR DATA_DIR [--sizes 224 192 160]

RUN_DIR is a cross-validation run of ``leftatriumseg train --folds K``; every case is segmented
by the fold model that never saw it, as in ``bench/cross_validation.py``. Each image and its
label are cropped to SIZE x SIZE voxels in the image's first two axes, centred on the label's
centroid (as a user cropping to the heart would), kept whole along the third axis, then
segmented with the default cleanup. Intensities are normalised over whatever volume the model
is given, so tighter crops shift them; this measures what that costs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from LeftAtriumSegLib.evaluation import held_out_cases
from LeftAtriumSegLib.inference import predict_probability_map
from LeftAtriumSegLib.metrics import dice
from LeftAtriumSegLib.postprocessing import CleanupSettings, clean_mask


def crop_in_plane(image: sitk.Image, centre_ij: tuple[int, int], size: int) -> sitk.Image:
    """``size`` x ``size`` voxels around ``centre_ij`` (clipped to the image), whole along k."""
    start, extent = [], []
    for centre, length in zip(centre_ij, image.GetSize()[:2]):
        width = min(size, length)
        first = int(np.clip(centre - width // 2, 0, length - width))
        start.append(first)
        extent.append(width)
    return sitk.RegionOfInterest(image, [*extent, image.GetSize()[2]], [*start, 0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 192, 160], help="in-plane crop sizes, voxels")
    args = parser.parse_args()

    cleanup = CleanupSettings()
    columns = ["full", *map(str, args.sizes)]
    rows = []
    for _, case, image, label, (networks, config) in held_out_cases(args.run_dir, args.data_dir):
        k, j, i = np.nonzero(sitk.GetArrayFromImage(label))
        centre_ij = (int(round(i.mean())), int(round(j.mean())))
        scores = {}
        for column in columns:
            size = max(image.GetSize()) if column == "full" else int(column)
            cropped_image, cropped_label = (crop_in_plane(x, centre_ij, size) for x in (image, label))
            probability_map = predict_probability_map(cropped_image, networks, config)
            mask = clean_mask(sitk.GetArrayFromImage(probability_map), cropped_image.GetSpacing(), cleanup)
            scores[column] = dice(mask, sitk.GetArrayFromImage(cropped_label) > 0)
        rows.append((case, image.GetSize(), scores))
        print(f"{case}: " + ", ".join(f"{c} {scores[c]:.3f}" for c in columns), flush=True)

    print("\n| case | size | " + " | ".join(f"Dice {c}" for c in columns) + " |")
    print("|---|---|" + "---|" * len(columns))
    for case, size, scores in sorted(rows):
        print(f"| {case} | {'x'.join(map(str, size))} | " + " | ".join(f"{scores[c]:.3f}" for c in columns) + " |")
    means = {c: np.mean([scores[c] for _, _, scores in rows]) for c in columns}
    print("| **mean** | | " + " | ".join(f"**{means[c]:.3f}**" for c in columns) + " |")


if __name__ == "__main__":
    main()
