"""``leftatriumseg train``: one model on every case, or a cross-validation, from data folders to
model files, checkpoints and the training record."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from ..datasets import DataFolders
from ..errors import LeftAtriumSegError
from ..io import create_output_folder, held_alone, remove_stale_partials
from ..model_file import ModelConfig, save_model
from .checkpoints import check_checkpoint
from .layout import (
    CARD_NAME,
    MODEL_NAME,
    PROBABILITY_FOLDER,
    RECORD_NAME,
    checkpoint_path,
    fold_folder,
    probability_map_path,
)
from .cross_validation import cross_validate, make_folds
from .data import prepare_cases
from .losses import Loss, dice_bce_loss
from .loop import train_networks
from .record import new_record, resumed_record, with_case_files, write_record
from .quantization import quantize_model_file
from .settings import TrainingSettings


def train_model(
    data: DataFolders | Sequence[str | Path],
    output_dir: str | Path,
    config: ModelConfig,
    settings: TrainingSettings,
    folds: int = 0,
    *,
    show_progress: bool = True,
    command: str = "",
    device: str | torch.device = "cpu",
    overwrite: bool = False,
    resume: bool = False,
    loss: Loss = dice_bce_loss,
) -> dict:
    """Train one model on every case (``folds`` = 0), or cross-validate (``folds`` >= 2).

    Every case is read and checked before anything is written, so a bad file stops the run in
    one line. Training on every case writes ``model.safetensors``; cross-validation writes, per
    fold, ``fold_K/model.safetensors`` and the held-out cases' probability maps,
    ``probabilities/CASE.nii.gz`` (``cross_validation.cross_validate``). Each view's
    checkpoint lies beside its model. ``training.json`` records the run when training starts,
    after each fold and at the end.

    Parameters
    ----------
    data : DataFolders or sequence of str or pathlib.Path
        The Decathlon folders to train on and their known faults; a plain sequence of folders
        has none. Task02_Heart folders' cases are trained on as given and turned to their
        anatomy, respaced folders' as given and with the scans' spacing
        (``training.data.training_presentations``).
    output_dir : str or pathlib.Path
        Must be new or empty, unless ``overwrite`` or ``resume``.
    config : ModelConfig
        The model: views, slices, channels, frame, name and version.
    settings : TrainingSettings
        How each view's network trains.
    folds : int
        0, or the number of folds.
    show_progress : bool
        Show progress bars.
    command : str
        The command line, recorded (a resumed run adds it to ``resumed_by``).
    device : str or torch.device
        Where the networks train.
    overwrite : bool
        Train into an ``output_dir`` that holds files (an earlier run's model and maps are the
        user's, so this must be asked for).
    resume : bool
        Go on with the interrupted run in ``output_dir`` from its checkpoints; needs the same
        cases (their images and labels unchanged, where the run recorded their SHA-256), folds,
        Task02_Heart and respaced folders, config and settings. Finished views and
        folds are not trained again, and the weights end as an uninterrupted run's would.
    loss : callable
        (logits, targets) -> scalar to minimise (``losses.Loss``).

    Returns
    -------
    dict
        The record as written to ``training.json``: ``new_record``'s keys, then
        ``preparation_seconds``, ``training_seconds`` by view (every case) or ``folds`` (each
        with ``validation`` and ``training_seconds``), and ``total_seconds``, or with ``resume``
        ``resumed_by`` and ``last_sitting_seconds`` (only the views' training seconds add up
        all sittings; a finished run resumed keeps its ``total_seconds`` too).

    Raises
    ------
    LeftAtriumSegError
        A folder is not in the Decathlon layout; ``output_dir`` is a file, cannot be written or
        holds files; with ``resume``, there is no earlier run of the same training there or a
        checkpoint is damaged.
    InputImageError
        A case's image or label is missing, corrupt, unusable or off its image's grid.
    """
    data = data if isinstance(data, DataFolders) else DataFolders(data)
    cases = data.read_cases()
    if folds > len(cases):  # before any work; make_folds counts distinct images once they are read
        raise LeftAtriumSegError(f"--folds {folds}: there are only {len(cases)} cases to hold out")
    output_dir = Path(output_dir)
    run = output_dir.resolve()
    for folder in data.folders:  # maps and models written among the scans could take their names
        scans = Path(folder).resolve()
        if run == scans or scans in run.parents or run in scans.parents:
            raise LeftAtriumSegError(f"{output_dir}: --output-dir must lie apart from the data folder {folder}")
    record_path = output_dir / RECORD_NAME
    record = new_record(data, cases, folds, config, settings, command, device)
    outputs, folders = _run_outputs(output_dir, folds, config.views, [case.case_id for case in cases])
    if not resume and not output_dir.exists():
        create_output_folder(output_dir)  # to be held from the start
    # Two runs in one folder (a job requeued while the first still runs; an --overwrite of a run
    # not yet ended) would write a mix of both, and the second would remove the first's files.
    with held_alone(output_dir, "train"):
        if resume:
            record = resumed_record(record_path, record)
            for folder in folders:
                remove_stale_partials(folder)  # of a run killed while it wrote
            for checkpoint in outputs:  # before this sitting is recorded
                if checkpoint.name.startswith("checkpoint_") and checkpoint.exists():
                    check_checkpoint(checkpoint, config, settings)
        else:
            _claim_output_folder(output_dir, overwrite)
            if obstacle := next((folder for folder in folders if folder.exists() and not folder.is_dir()), None):
                raise LeftAtriumSegError(f"{obstacle}: not a folder, where the run puts one; move it away")
        start = time.perf_counter()
        prepared = prepare_cases(cases, config, settings.fractional_labels, show_progress)
        # Split once the images are known to read, before anything is written: too many folds for the
        # distinct images leaves the folder as empty as a bad image does.
        validation_sets = make_folds(cases, folds, settings.seed) if folds else []
        record = with_case_files(record, cases, output_dir, resume)
        record["preparation_seconds"] = round(time.perf_counter() - start, 1)
        if overwrite and not resume:  # only now: an earlier run outlives a new one refused for its data
            _remove_earlier_run(output_dir)
            # Whatever lies where this run writes is not its own: a later --resume would take a
            # checkpoint there for this run's (one an interrupted removal or another tool left).
            _remove_files(outputs, output_dir)
        write_record(record_path, record)
        if folds == 0:
            training = prepared.training_list()
            networks, record["training_seconds"] = train_networks(
                training, config, settings, output_dir, show_progress=show_progress, device=device, resume=resume, loss=loss)
            save_model(output_dir / MODEL_NAME, networks, config)
            quantize_model_file(output_dir / MODEL_NAME, training, settings.seed)
        else:
            record["folds"] = []
            for fold in cross_validate(prepared, validation_sets, config, settings, output_dir,
                                       show_progress=show_progress, device=device, resume=resume, loss=loss):
                record["folds"].append(fold)
                write_record(record_path, record)
        # A resumed run's earlier sittings ended unrecorded: only the views' training seconds add them all.
        record["last_sitting_seconds" if resume else "total_seconds"] = round(time.perf_counter() - start, 1)
        write_record(record_path, record)
        return record


def _claim_output_folder(output_dir: Path, overwrite: bool) -> None:
    """Make ``output_dir``, and refuse one that holds files unless ``overwrite``."""
    create_output_folder(output_dir)
    if not overwrite and any(output_dir.iterdir()):
        if (output_dir / RECORD_NAME).is_file():
            raise LeftAtriumSegError(f"{output_dir}: holds an earlier run ({RECORD_NAME}): --resume goes on with it "
                                     "if it was interrupted, --overwrite replaces it")
        raise LeftAtriumSegError(f"{output_dir}: --output-dir is not empty (use --overwrite to train into it)")


def _run_outputs(output_dir: Path, folds: int, views, case_ids) -> tuple[list[Path], list[Path]]:
    """The files a run of ``folds`` folds over these views and cases writes in ``output_dir``
    (``layout``) besides its record and card, and the folders they lie in."""
    model_dirs = [fold_folder(output_dir, index) for index in range(folds)] if folds else [output_dir]
    files = [path for folder in model_dirs for path in (folder / MODEL_NAME, *(checkpoint_path(folder, view) for view in views))]
    files += [probability_map_path(output_dir, case) for case in case_ids] if folds else []
    return files, [*model_dirs, *([output_dir / PROBABILITY_FOLDER] if folds else [])]


def _remove_files(paths: list[Path], output_dir: Path) -> None:
    """Remove the plain files among ``paths``, not links nor anything in a folder of ``output_dir``
    that is a link (it may lead out of the run folder), and the folders they leave empty."""
    for path in paths:
        inside_link = path.parent != output_dir and path.parent.is_symlink()
        if not inside_link and path.is_file() and not path.is_symlink():
            try:
                path.unlink()
            except OSError as error:
                raise LeftAtriumSegError(f"{path}: cannot be removed ({error.strerror}); the earlier run's other files "
                                         "stay until --overwrite can remove it") from None
    for folder in {path.parent for path in paths} - {output_dir}:
        if folder.is_dir() and not folder.is_symlink():
            remove_stale_partials(folder)
            if not any(folder.iterdir()):
                folder.rmdir()


def _remove_earlier_run(output_dir: Path) -> None:
    """Remove what the run recorded in ``output_dir``'s ``training.json`` wrote, so that none of it
    is taken for this run's (a model beside a cross-validation's record): its models and
    checkpoints, its folds' folders, its cases' held-out maps, its card, then its record. Nothing
    that no readable record names (another tool's files), and nothing through a link
    (``_remove_files``). Its record goes last: a removal that stops leaves a run the next
    ``--overwrite`` finishes removing."""
    record_path = output_dir / RECORD_NAME
    try:
        earlier = json.loads(record_path.read_text(encoding="utf-8"))
        views, cases, folds = earlier["config"]["views"], earlier["cases"], earlier.get("fold_count") or 0
    except (OSError, ValueError, TypeError, KeyError, AttributeError, RecursionError):  # no readable record
        return
    # A record edited by hand names no file outside its folders: only plain names, and no more folds than cases.
    names_plain = all(isinstance(name, str) and Path(name).name == name and name not in ("", ".", "..")
                      for name in (*views, *cases)) if isinstance(views, list) and isinstance(cases, list) else False
    if not names_plain or type(folds) is not int or not 0 <= folds <= len(cases):
        return
    files, _ = _run_outputs(output_dir, folds, views, cases)
    _remove_files([*files, output_dir / CARD_NAME, record_path], output_dir)
