"""Case-wise k-fold cross-validation: the folds, and per fold its model and the held-out
cases' probability maps, which ``evaluate``, the cleanup ablation and the model card score."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from pathlib import Path

import SimpleITK as sitk
import torch

from ..datasets import Case, case_groups
from ..errors import LeftAtriumSegError
from ..inference import predict
from ..io import atomic_output
from ..model_file import ModelConfig, save_model
from ..onnx_network import load_onnx_networks
from .data import PreparedCases
from .layout import MODEL_NAME, PROBABILITY_FOLDER, fold_folder, probability_map_path
from .losses import Loss, dice_bce_loss
from .loop import train_networks
from .quantization import quantize_model_file
from .settings import TrainingSettings


def make_folds(cases: Sequence[Case], folds: int, seed: int = 0) -> list[list[Case]]:
    """Split the cases into validation sets, keeping each group of identical images whole.

    Parameters
    ----------
    cases : sequence of Case
        Their images are read (``datasets.case_groups``).
    folds : int
        How many validation sets, >= 1.
    seed : int
        Seeds the shuffle of the groups before they are dealt out.

    Returns
    -------
    list of list of Case
        ``folds`` validation sets, each sorted by case ID; together every case once, their
        sizes as even as the groups allow.

    Raises
    ------
    LeftAtriumSegError
        More folds than groups of identical images.
    """
    groups = case_groups(cases)
    if folds > len(groups):
        raise LeftAtriumSegError(f"--folds {folds}: there are only {len(groups)} distinct images to hold out "
                                 f"({len(cases)} cases); a fold with none would validate nothing")
    random.Random(seed).shuffle(groups)
    groups.sort(key=len, reverse=True)  # place big groups first so fold sizes stay even
    split: list[list[Case]] = [[] for _ in range(folds)]
    for group in groups:
        min(split, key=len).extend(group)
    return [sorted(fold, key=lambda case: case.case_id) for fold in split]


def cross_validate(
    data: PreparedCases,
    validation_sets: Sequence[Sequence[Case]],
    config: ModelConfig,
    settings: TrainingSettings,
    output_dir: Path,
    show_progress: bool = True,
    device: str | torch.device = "cpu",
    resume: bool = False,
    loss: Loss = dice_bce_loss,
) -> Iterator[dict]:
    """Train each fold's model on the other folds' cases and predict the cases it holds out.

    Fold K writes ``output_dir/fold_K/model.safetensors`` (and the views' checkpoints there);
    each held-out case's probability map, on its own grid, is
    ``output_dir/probabilities/CASE.nii.gz``, predicted from the saved file by ONNX Runtime, as
    ``segment`` runs it.

    Parameters
    ----------
    data : PreparedCases
        The run's cases, prepared.
    validation_sets : sequence of sequence of Case
        Each fold's held-out cases (``make_folds``).
    config, settings, show_progress, device, resume, loss
        As for ``loop.train_networks``.
    output_dir : pathlib.Path
        An existing folder.

    Yields
    ------
    dict
        Per fold, once its files are written: ``validation`` (the held-out case IDs, sorted)
        and ``training_seconds`` (by view).

    Raises
    ------
    LeftAtriumSegError
        With ``resume``: a checkpoint is unreadable, damaged or another training's.
    """
    (output_dir / PROBABILITY_FOLDER).mkdir(exist_ok=True)
    for index, validation in enumerate(validation_sets):
        fold_dir = fold_folder(output_dir, index)
        fold_dir.mkdir(exist_ok=True)
        training = data.training_list(held_out=validation)
        networks, seconds = train_networks(
            training, config, settings, fold_dir,
            description=f"fold_{index} (of {len(validation_sets)}) ", show_progress=show_progress, device=device, resume=resume, loss=loss,
        )
        save_model(fold_dir / MODEL_NAME, networks, config)
        quantize_model_file(fold_dir / MODEL_NAME, training, settings.seed)
        _write_probability_maps(fold_dir / MODEL_NAME, validation, config, output_dir)
        yield {"validation": sorted({case.case_id for case in validation}), "training_seconds": seconds}


def _write_probability_maps(model_path: Path, cases: Sequence[Case], config: ModelConfig, run_dir: Path) -> None:
    """Each case's probability map by the model file at ``model_path``, on the case's own grid."""
    networks, _ = load_onnx_networks(model_path, "cpu")
    for case in cases:
        probability_map = predict(sitk.ReadImage(str(case.image_path)), networks, config).probability_map
        with atomic_output(probability_map_path(run_dir, case.case_id), overwrite=True) as temporary:
            sitk.WriteImage(probability_map, str(temporary), useCompression=True)
