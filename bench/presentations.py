"""Shared by the benchmarks that score one model on cases presented two ways (``task02_anatomy``,
``lge_slice_spacing``): which model scores each case, and the per-case and mean table."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from LeftAtriumSegLib.io import read_mask
from LeftAtriumSegLib.metrics import segmentation_metrics
from LeftAtriumSegLib.models import model_path
from LeftAtriumSegLib.pipeline import Segmenter
from LeftAtriumSegLib.datasets import Case

# How a case is shown to the model: applied alike to its image and its reference mask.
Present = Callable[[sitk.Image], sitk.Image]


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    which_model = parser.add_mutually_exclusive_group()
    which_model.add_argument("--model", type=Path, default=model_path())
    which_model.add_argument("--run", type=Path, help="a `train --folds K` run: score each case it held out with its fold's model")


def case_models(cases: list[Case], args: argparse.Namespace) -> dict[str, Path]:
    """The model file to score each case with: ``--model``, or with ``--run`` the model of the
    fold that held the case out (cases it did not hold out are left out)."""
    if args.run is None:
        return {case.case_id: args.model for case in cases}
    folds = json.loads((args.run / "training.json").read_text(encoding="utf-8"))["folds"]
    return {case_id: args.run / f"fold_{index}" / "model.safetensors"
            for index, fold in enumerate(folds) for case_id in fold["validation"]}


def score_presentations(cases: list[Case], args: argparse.Namespace, presentations: dict[str, Present]) -> None:
    """Run ``segment``'s whole pipeline on each case in each presentation (applied alike to image and
    mask) and print Dice, HD95 (mm) and the signed volume error (mL, in the presentation's own
    scale) per case, then their means."""
    models = case_models(cases, args)
    segmenters: dict[Path, Segmenter] = {}
    print("Dice, HD95 (mm) and signed volume error (mL), segment's whole pipeline")
    print(f"{'case':22s} {'model':12s}" + "".join(f" {name:>22s}" for name in presentations))
    scores: dict[str, list[tuple[float, float, float]]] = {name: [] for name in presentations}
    for case in cases:
        if case.case_id not in models:
            continue
        if models[case.case_id] not in segmenters:
            segmenters[models[case.case_id]] = Segmenter.load(models[case.case_id], "cpu")
        segmenter = segmenters[models[case.case_id]]
        image, mask = sitk.ReadImage(str(case.image_path)), read_mask(case.label_path)
        cells = []
        for name, present in presentations.items():
            presented, reference = present(image), present(mask)
            metrics = segmentation_metrics(segmenter.segment(presented).mask, sitk.GetArrayFromImage(reference) > 0,
                                           presented.GetSpacing())
            signed_ml = metrics["predicted_ml"] - metrics["reference_ml"]
            scores[name].append((metrics["dice"], metrics["hd95_mm"], signed_ml))
            cells.append(f"{metrics['dice']:.3f} {metrics['hd95_mm']:6.2f} {signed_ml:+7.1f}")
        model = models[case.case_id].parent.name if args.run else segmenter.config.label
        print(f"{case.case_id:22s} {model[:12]:12s}" + "".join(f" {cell:>22s}" for cell in cells), flush=True)
    for name, values in scores.items():
        dice, hd95_mm, signed_ml = np.array(values).T
        print(f"{name}: mean Dice {dice.mean():.3f} (lowest {dice.min():.3f}), HD95 {hd95_mm.mean():.2f} mm, "
              f"absolute volume error {np.abs(signed_ml).mean():.2f} mL (signed {signed_ml.mean():+.2f})")
