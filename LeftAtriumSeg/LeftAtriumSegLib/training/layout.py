"""Where a training run's files lie in its folder: ``train`` writes them there, ``--overwrite``
and ``--resume`` find them, the model card and the benchmarks read them.

- ``training.json``, ``MODEL_CARD.md``;
- ``model.safetensors`` and ``checkpoint_VIEW.safetensors``, at the top (every case) or in each
  fold's folder ``fold_K``;
- ``probabilities/CASE.nii.gz``, the held-out maps of a cross-validation.
"""

from __future__ import annotations

from pathlib import Path

RECORD_NAME = "training.json"
CARD_NAME = "MODEL_CARD.md"
MODEL_NAME = "model.safetensors"
CHECKPOINT_PATTERN = "checkpoint_*.safetensors"
PROBABILITY_FOLDER = "probabilities"


def fold_folder(run_dir: Path, index: int) -> Path:
    return run_dir / f"fold_{index}"


def checkpoint_path(folder: Path, view: str) -> Path:
    return folder / CHECKPOINT_PATTERN.replace("*", view)


def probability_map_path(run_dir: Path, case_id: str) -> Path:
    return run_dir / PROBABILITY_FOLDER / f"{case_id}.nii.gz"
