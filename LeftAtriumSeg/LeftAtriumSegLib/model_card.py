"""The model card that ``leftatriumseg train`` writes beside its model: data, licences, split,
settings, command, wall times, parameter count and, for a cross-validation run, the held-out
metrics per data set.

Everything is read back from the run folder (``training.json``, the model file, the held-out
probability maps) and from the data folders it names, so a card can be rewritten for any run.
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path

from .datasets import read_decathlon_cases
from .evaluation import probability_map_and_label
from .io import atomic_output
from .metrics import mean_of_defined, segmentation_metrics
from .model_file import model_file_sha256
from .postprocessing import CleanupSettings, clean_mask
from .training.layout import CARD_NAME, MODEL_NAME, RECORD_NAME, probability_map_path



def held_out_metrics(run_dir: Path, data_folder: Path, fold_of: dict[str, int], settings: CleanupSettings) -> list[dict]:
    """Per-case metrics of ``data_folder``'s held-out probability maps, cleaned with ``settings``.

    Parameters
    ----------
    run_dir : Path
        A cross-validation run; its held-out maps are in ``run_dir/probabilities``.
    data_folder : Path
        A data folder the run used; its labels are those its ``dataset.json`` lists.
    fold_of : dict of str to int
        The fold that held out each case; cases not in it are left out.
    settings : CleanupSettings

    Returns
    -------
    list of dict
        One row per case, in ``dataset.json``'s order: ``case``, ``fold`` and the metrics of
        ``metrics.segmentation_metrics``.
    """
    rows = []
    for case in read_decathlon_cases(data_folder):
        if case.case_id not in fold_of:
            continue
        probability_map, reference, spacing_mm = probability_map_and_label(
            probability_map_path(run_dir, case.case_id), case.label_path)
        rows.append({"case": case.case_id, "fold": fold_of[case.case_id], **segmentation_metrics(
            clean_mask(probability_map, spacing_mm, settings), reference, spacing_mm)})
    return rows


def _wall_time(training: dict) -> str:
    last = f"last sitting {training.get('last_sitting_seconds', 'unfinished')} s"
    if "total_seconds" in training:  # finished in one sitting, perhaps resumed since (which trains nothing)
        return f"total wall time **{training['total_seconds']} s**" + (f"; resumed since, {last}." if "resumed_by" in training else ".")
    if "resumed_by" in training:
        return f"{last} (resumed: the training times per view below add up all sittings; the whole wall time was not recorded)."
    return "total wall time unfinished."


def _dataset_lines(training: dict) -> list[str]:
    lines = ["| folder | data set | cases | licence | reference |", "|---|---|---|---|---|"]
    for folder in map(Path, training["data_folders"]):
        listing = json.loads((folder / "dataset.json").read_text(encoding="utf-8"))
        lines.append(f"| `{folder.name}` | {listing.get('description', listing.get('name', ''))} "
                     f"| {len(listing['training'])} | {listing.get('licence', 'not stated in dataset.json')} "
                     f"| {listing.get('reference', '')} |")
    return lines


def _metrics_lines(rows: list[dict]) -> list[str]:
    lines = ["| case | fold | Dice | HD95 mm | ASSD mm | reference mL | predicted mL | abs. volume error mL |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['case']} | {r['fold']} | {r['dice']:.3f} | {r['hd95_mm']:.2f} | {r['assd_mm']:.2f} "
              f"| {r['reference_ml']:.1f} | {r['predicted_ml']:.1f} | {r['abs_volume_error_ml']:.2f} |" for r in rows]
    mean = {key: mean_of_defined([r[key] for r in rows])
            for key in ("dice", "hd95_mm", "assd_mm", "reference_ml", "predicted_ml", "abs_volume_error_ml")}
    lines.append(f"| **mean** | | **{mean['dice']:.3f}** | **{mean['hd95_mm']:.2f}** | **{mean['assd_mm']:.2f}** "
                 f"| {mean['reference_ml']:.1f} | {mean['predicted_ml']:.1f} | **{mean['abs_volume_error_ml']:.2f}** |")
    lines.append(f"\nMinimum Dice {min(r['dice'] for r in rows):.3f} ({len(rows)} cases).")
    return lines


def model_card(run_dir: Path) -> str:
    """The Markdown card of the training run in ``run_dir``.

    Read back from ``training.json``, the model file and, for a cross-validation run, the
    held-out probability maps, and from the data folders they name.
    """
    training = json.loads((run_dir / RECORD_NAME).read_text(encoding="utf-8"))
    config, settings = training["config"], training["settings"]
    cleanup = CleanupSettings()
    if "folds" in training:
        what = (f"Cross-validation run, {len(training['folds'])} folds by case (identical images in one fold): "
                "each fold's model is `fold_K/model.safetensors`.")
    else:
        digest = model_file_sha256(run_dir / MODEL_NAME)
        what = f"Model file `model.safetensors`, trained on every case listed below; SHA-256 `{digest}`."
    lines = [
        f"# Model card: {config['name']} {config['version']}",
        "",
        f"Written by `leftatriumseg train` on {datetime.date.today().isoformat()}. {what}",
        "",
        "## Model",
        f"- Views {', '.join(config['views'])}: one 2.5D U-Net each (`LeftAtriumSegLib/network.py`), "
        f"{config['slices']} neighbouring slices in, the centre slice's logits out, levels of "
        f"{tuple(config['features'])} channels; **{training['parameters']:,} parameters** in all. "
        "The views' probabilities are averaged; the first view localises the atrium.",
        f"- Expected input: a 3D scalar MRI; it is resampled onto a grid along the patient's axes, "
        f"**{config['frame']['orientation']}**, **{' x '.join(str(s) for s in config['frame']['spacing_mm'])} mm**, "
        "however obliquely it was acquired, clipped to its 0.5-99.5th percentiles and z-scored over the voxels "
        "the scan covers; the probability map goes back onto the input's grid.",
        f"- Cleanup defaults: threshold {cleanup.threshold}, largest component "
        f"{'kept' if cleanup.keep_largest_component else 'not selected'} (plus components within "
        f"{cleanup.component_gap_mm} mm), holes {'filled' if cleanup.fill_holes else 'kept'}, "
        f"closing {cleanup.closing_radius_mm} mm.",
        "",
        "## Training data",
        *_dataset_lines(training),
        "",
        *([f"- Cases of {', '.join(f'`{Path(folder).name}`' for folder in training['task02_header_folders'])} "
           "(Task02_Heart's headers, which mislabel the axes) were trained on as given and again turned to "
           "their anatomy, as a scan with correct geometry shows it.", ""]
          if training.get("task02_header_folders") else []),
        *(line for folder, spacing_mm in training.get("respaced_folders", {}).items() for line in (
            f"- Cases of `{Path(folder).name}` were trained on as given and with a voxel spacing of "
            f"{' x '.join(str(s) for s in spacing_mm)} mm (x, y, z), where their headers state another "
            "(each case drawn half the time each way).", "")),
        "Respect each data set's licence and cite its reference when you use or share this model.",
        "",
        "## Training",
        f"- Command: `{training.get('command', 'not recorded')}`",
        *(f"- Resumed with: `{command}`" for command in training.get("resumed_by", [])),
        "- Settings: " + ", ".join(f"{name} {value}" for name, value in settings.items()),
        f"- torch threads {training['torch_threads']}; data preparation {training['preparation_seconds']} s; "
        + _wall_time(training),
    ]
    if "folds" in training:
        for index, fold in enumerate(training["folds"]):
            times = ", ".join(f"{view} {seconds} s" for view, seconds in fold["training_seconds"].items())
            lines.append(f"- Fold {index}: held out {', '.join(fold['validation'])}; training {times}.")
        lines += ["", "## Cross-validation (held-out cases, default cleanup)"]
        fold_of = {case: index for index, fold in enumerate(training["folds"]) for case in fold["validation"]}
        for folder in map(Path, training["data_folders"]):
            rows = held_out_metrics(run_dir, folder, fold_of, cleanup)
            lines += ["", f"### `{folder.name}`", "", *_metrics_lines(rows)]
    else:
        times = ", ".join(f"{view} {seconds} s" for view, seconds in training["training_seconds"].items())
        lines.append(f"- Training per view: {times}.")
    return "\n".join(lines) + "\n"


def write_model_card(run_dir: str | Path) -> Path:
    """Write ``run_dir/MODEL_CARD.md`` (replacing the run's previous card) and return its path."""
    path = Path(run_dir) / CARD_NAME
    text = model_card(Path(run_dir))
    with atomic_output(path, overwrite=True) as partial:
        partial.write_text(text, encoding="utf-8")
    return path
