"""Training of the 2.5D U-Nets, with case-wise k-fold cross-validation.

Data come as folders in the Medical Segmentation Decathlon layout (``..datasets``). Every case
is brought into the model frame once and kept in memory; each view's network is trained on its
own slicing of it (or, with ``random_orientation``, on every slicing, transposed and flipped),
with batches of random crops of slice stacks, rotated, scaled and intensity-jittered.

One module per stage, each importing only those above it:

- ``layout``: where a run's files lie in its folder;
- ``settings``: ``TrainingSettings``, every choice that shapes the weights;
- ``data``: cases prepared in the model frame, and the training list;
- ``augmentation``: batches of random augmented crops;
- ``losses``: what the networks minimise;
- ``checkpoints``: a view's training state, saved and restored;
- ``loop``: the learning-rate schedule and the training of each view's network;
- ``cross_validation``: the folds, and per fold its model and held-out probability maps;
- ``record``: ``training.json``;
- ``run``: ``train_model``, what ``leftatriumseg train`` runs.

The names below are imported when first used (PEP 562), so that ``settings`` can be read without
torch's 1.5 s import: the command line shows the settings' defaults in ``train --help``.
"""

from __future__ import annotations

import importlib

# Each exported name, and the stage that defines it.
_STAGE_OF = {
    "TrainingSettings": "settings",
    "PreparedCase": "data",
    "PreparedCases": "data",
    "TrainingEntry": "data",
    "label_in_frame": "data",
    "prepare_case": "data",
    "prepare_cases": "data",
    "training_presentations": "data",
    "sample_batch": "augmentation",
    "Loss": "losses",
    "dice_bce_loss": "losses",
    "checkpoint_seconds": "checkpoints",
    "load_checkpoint": "checkpoints",
    "save_checkpoint": "checkpoints",
    "learning_rate_at": "loop",
    "resolve_device": "loop",
    "train_network": "loop",
    "train_networks": "loop",
    "cross_validate": "cross_validation",
    "make_folds": "cross_validation",
    "train_model": "run",
}

__all__ = sorted(_STAGE_OF)


def __getattr__(name: str) -> object:
    if name not in _STAGE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_STAGE_OF[name]}", __name__), name)


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
