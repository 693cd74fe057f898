"""Compare predictions with reference labels, per case and on average."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Iterator
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from tqdm import tqdm

from .datasets import read_decathlon_cases
from .training.layout import MODEL_NAME, RECORD_NAME, fold_folder
from .errors import LeftAtriumSegError, error_line, some_names
from .io import files_by_case, on_grid_of, read_mask, read_probability_map
from .metrics import mean_of_defined, segmentation_metrics
from .postprocessing import CleanupSettings, clean_mask

METRIC_COLUMNS = ("dice", "hd95_mm", "assd_mm", "abs_volume_error_ml")


def held_out_cases(run_dir: Path, data_dir: Path) -> Iterator[tuple[int, str, sitk.Image, sitk.Image, tuple]]:
    """Every case of ``data_dir`` a cross-validation run held out, with the model of the fold that never saw it.

    Each fold's model is loaded once.

    Parameters
    ----------
    run_dir : Path
        The output of ``train --folds K``.
    data_dir : Path
        One of the Decathlon folders it used (a run trained on several is scored one folder at a
        time); its cases are those its ``dataset.json`` lists.

    Yields
    ------
    fold : int
    case : str
    image, label : SimpleITK.Image
        The case's image and reference label, as stored.
    model : tuple
        ``(networks, config)`` of the fold's model (``onnx_network.load_onnx_networks``).

    Raises
    ------
    ValueError
        Where ``data_dir`` holds none of the cases the run held out.
    """
    from .onnx_network import load_onnx_networks  # noqa: PLC0415 - onnxruntime only where a model is needed

    training = json.loads((run_dir / RECORD_NAME).read_text(encoding="utf-8"))
    listed = {case.case_id: case for case in read_decathlon_cases(data_dir)}
    held_out = [(index, listed[case]) for index, fold in enumerate(training["folds"]) for case in fold["validation"]
                if case in listed]
    if not held_out:
        raise ValueError(f"{data_dir}: holds none of the cases that {run_dir} held out")
    model_fold = None
    for index, case in held_out:
        if index != model_fold:
            model, model_fold = load_onnx_networks(fold_folder(run_dir, index) / MODEL_NAME, "cpu"), index
        yield index, case.case_id, sitk.ReadImage(str(case.image_path)), sitk.ReadImage(str(case.label_path)), model


def matched_cases(predicted: dict[str, Path], reference: dict[str, Path]) -> list[tuple[str, Path, Path]]:
    """``(case, prediction, label)`` for every case in both of two folders' ``files_by_case``,
    sorted by name.

    Raises
    ------
    LeftAtriumSegError
        For a file given as both a case's prediction and its label (one folder named twice), which
        would score perfectly against itself.
    """
    cases = [(case, predicted[case], reference[case]) for case in sorted(predicted.keys() & reference.keys())]
    for case, prediction, label in cases:
        if prediction.samefile(label):
            raise LeftAtriumSegError(f"{prediction}: is both the prediction and the label of case {case} (one folder "
                                     "given for both?); it would score perfectly against itself")
    return cases


def evaluate_case(prediction: Path, label: Path) -> dict:
    """Metrics of one predicted mask file against its reference label file (same grid).

    Returns
    -------
    dict of str to float
        As ``metrics.segmentation_metrics`` gives them.

    Raises
    ------
    InputImageError
        For a file that is not a readable mask (``io.read_mask``), or a prediction off its label's
        grid (``io.on_grid_of``).
    """
    label_image = read_mask(label)
    prediction_image = on_grid_of(read_mask(prediction), label_image, prediction, label, "label")
    return segmentation_metrics(
        sitk.GetArrayViewFromImage(prediction_image) > 0,
        sitk.GetArrayViewFromImage(label_image) > 0,
        label_image.GetSpacing(),
    )


def evaluate_folders(predictions: Path, labels: Path, show_progress: bool = False) -> tuple[list[dict], int, int]:
    """Score every prediction against the label of the same name.

    Prints one ``error:`` line on standard error for each case that cannot be scored and each
    label without a prediction, and a ``note:`` naming predictions without a label (not scored).

    Parameters
    ----------
    predictions, labels : Path
        Folders of predicted and reference masks.
    show_progress : bool, optional
        Show a progress bar.

    Returns
    -------
    rows : list of dict
        One per scored case, then their mean (case ``mean``); empty when none could be scored.
    failures : int
        Cases whose files could not be scored.
    missing : int
        Labels without a prediction (left out of the mean, as the failures are).

    Raises
    ------
    LeftAtriumSegError
        For a folder that does not exist, or no case in both.
    """
    predicted, labelled = files_by_case(predictions), files_by_case(labels)
    cases = matched_cases(predicted, labelled)
    if not cases:
        raise LeftAtriumSegError(f"no case is in both {predictions} and {labels}")
    for case in sorted(labelled.keys() - predicted.keys()):
        print(f"error: {labelled[case]}: no prediction for case {case} in {predictions}", file=sys.stderr)
    unlabelled = sorted(predicted.keys() - labelled.keys())
    if unlabelled:
        print(f"note: {len(unlabelled)} prediction(s) without a label in {labels}, not scored: {some_names(unlabelled)}",
              file=sys.stderr)
    rows, failures = [], 0
    progress = tqdm(cases, desc="evaluating", unit="case", disable=not show_progress, dynamic_ncols=True)
    for case, prediction, label in progress:
        try:
            rows.append({"case": case, **evaluate_case(prediction, label)})
        except (LeftAtriumSegError, ValueError, RuntimeError, OSError) as error:
            failures += 1
            progress.write(f"error: {error_line(error, prediction, label)}", file=sys.stderr)
    return (rows + [summarise(rows)] if rows else []), failures, len(labelled.keys() - predicted.keys())


def summarise(rows: list[dict]) -> dict:
    """Mean of each metric over the case rows, as a row of case ``mean``.

    NaN distances are left out of their mean.
    """
    return {"case": "mean", **{key: mean_of_defined([row[key] for row in rows]) for key in rows[0] if key != "case"}}


def labelled_probability_maps(probabilities: Path, labels: Path) -> Iterator[tuple[str, np.ndarray, np.ndarray, tuple]]:
    """Every stored probability map in ``probabilities`` that has a label in ``labels``.

    Only maps with a label are taken: a run over several data sets thus yields one set's cases
    at a time. A ``note:`` on standard error counts the others.

    Yields
    ------
    tuple
        The case's name, then what ``probability_map_and_label`` returns: the map and the
        reference mask on the label's grid, and the label's voxel spacing.

    Raises
    ------
    ValueError
        Where no probability map has a label in ``labels``.
    InputImageError
        As ``probability_map_and_label``.
    """
    maps = files_by_case(probabilities)
    cases = matched_cases(maps, files_by_case(labels))
    if not cases:
        raise ValueError(f"{probabilities}: no probability map has a label in {labels}")
    if unlabelled := sorted(maps.keys() - {case for case, _, _ in cases}):
        print(f"note: {len(unlabelled)} probability map(s) in {probabilities} have no label in {labels}, not scored: "
              f"{some_names(unlabelled)}", file=sys.stderr)
    for case, map_path, label_path in cases:
        yield case, *probability_map_and_label(map_path, label_path)


def probability_map_and_label(map_path: Path, label_path: Path) -> tuple[np.ndarray, np.ndarray, tuple]:
    """A stored probability map and its label, on the label's grid (``io.on_grid_of``).

    Returns
    -------
    probability_map : ndarray, shape (Z, Y, X)
    reference_mask : ndarray of bool, shape (Z, Y, X)
    spacing_mm : tuple of float
        The label's voxel spacing ``(x, y, z)`` in mm.

    Raises
    ------
    InputImageError
        For a map or label that cannot be read as one, or a map off its label's grid.
    """
    label = read_mask(label_path)
    probability_map = on_grid_of(read_probability_map(map_path), label, map_path, label_path, "label")
    return sitk.GetArrayFromImage(probability_map), sitk.GetArrayFromImage(label) > 0, label.GetSpacing()


def cleanup_ablation(probabilities: Path, labels: Path, variants: Iterable[tuple[str, CleanupSettings]],
                     show_progress: bool = False) -> list[dict]:
    """Mean metrics over cases for each cleanup variant, from stored probability maps.

    Every variant is scored on the same held-out predictions.

    Parameters
    ----------
    probabilities : Path
        Float probability maps on each label's grid, as cross-validation writes them.
    labels : Path
        Reference masks; only cases with a label here are scored (``labelled_probability_maps``).
    variants : iterable of (str, CleanupSettings)
        Name and settings of each variant (``ablation_variants``).
    show_progress : bool, optional
        Show a progress bar.

    Returns
    -------
    list of dict
        One row per variant: ``variant``, the mean of each of ``METRIC_COLUMNS``, ``min_dice``
        and the variant's settings.
    """
    cases = list(labelled_probability_maps(probabilities, labels))
    results = []
    for name, settings in tqdm(list(variants), desc="cleanup variants", unit="variant", disable=not show_progress):
        rows = [segmentation_metrics(clean_mask(probability, spacing, settings), label, spacing)
                for _, probability, label, spacing in cases]
        results.append({"variant": name, **{key: mean_of_defined([r[key] for r in rows]) for key in METRIC_COLUMNS},
                        "min_dice": float(min(r["dice"] for r in rows)), **asdict(settings)})
    return results


def ablation_variants(defaults: CleanupSettings | None = None) -> list[tuple[str, CleanupSettings]]:
    """Each cleanup step removed or changed alone from the defaults, plus nothing at all. The first
    variant is named ``defaults``, or ``given cleanup`` where ``defaults`` are not the package's.

    Parameters
    ----------
    defaults : CleanupSettings, optional
        The settings varied; ``CleanupSettings()`` unless given.

    Returns
    -------
    list of (str, CleanupSettings)
        Named variants for ``cleanup_ablation``, the defaults first; a variant that would clean as
        the defaults or an earlier variant does is left out.
    """
    defaults = defaults or CleanupSettings()
    candidates = [("threshold only", CleanupSettings(defaults.threshold, False, 0.0, False, 0.0)),
                  ("no largest component", replace(defaults, keep_largest_component=False)),
                  ("largest component, no gap", replace(defaults, keep_largest_component=True, component_gap_mm=0.0)),
                  ("no hole filling", replace(defaults, fill_holes=False))]
    candidates += [(f"threshold {t}", replace(defaults, threshold=t)) for t in (0.3, 0.4, 0.5, 0.6, 0.7)]
    if defaults.keep_largest_component:  # the gap is the largest component's
        candidates += [(f"gap {g} mm", replace(defaults, component_gap_mm=g)) for g in (2.0, 10.0, 20.0)]
    candidates += [(f"closing {r} mm", replace(defaults, closing_radius_mm=r)) for r in (0.0, 1.5, 3.0)]

    def cleaning(settings: CleanupSettings) -> CleanupSettings:
        return settings if settings.keep_largest_component else replace(settings, component_gap_mm=0.0)

    variants = [("defaults" if defaults == CleanupSettings() else "given cleanup", defaults)]
    for name, settings in candidates:
        if all(cleaning(settings) != cleaning(earlier) for _, earlier in variants):
            variants.append((name, settings))
    return variants
