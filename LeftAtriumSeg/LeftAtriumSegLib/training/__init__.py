"""Training of the 2.5D U-Nets, with case-wise k-fold cross-validation.

Data come as folders in the Medical Segmentation Decathlon layout (``..datasets``). Every case
is brought into the model frame once and kept in memory; each view's network is trained on its
own slicing of it (or, with ``random_orientation``, on every slicing, transposed and flipped),
with batches of random crops of slice stacks, rotated, scaled and intensity-jittered.

One module per stage, each importing only those above it:

- ``settings``: ``TrainingSettings``, every choice that shapes the weights;
- ``data``: cases prepared in the model frame, and the training list;
- ``augmentation``: batches of random augmented crops;
- ``losses``: what the networks minimise;
- ``checkpoints``: a view's training state, saved and restored;
- ``loop``: the learning-rate schedule and the training of each view's network;
- ``cross_validation``: the folds, and per fold its model and held-out probability maps;
- ``record``: ``training.json``;
- ``run``: ``train_model``, what ``leftatriumseg train`` runs.
"""

from .augmentation import sample_batch
from .checkpoints import checkpoint_seconds, load_checkpoint, save_checkpoint
from .cross_validation import cross_validate, make_folds
from .data import (
    PreparedCase,
    PreparedCases,
    TrainingEntry,
    label_in_frame,
    prepare_case,
    prepare_cases,
    training_presentations,
)
from .losses import Loss, dice_bce_loss
from .loop import learning_rate_at, resolve_device, train_network, train_networks
from .run import train_model
from .settings import TrainingSettings

__all__ = [
    "Loss",
    "PreparedCase",
    "PreparedCases",
    "TrainingEntry",
    "TrainingSettings",
    "checkpoint_seconds",
    "cross_validate",
    "dice_bce_loss",
    "label_in_frame",
    "learning_rate_at",
    "load_checkpoint",
    "make_folds",
    "prepare_case",
    "prepare_cases",
    "resolve_device",
    "sample_batch",
    "save_checkpoint",
    "train_model",
    "train_network",
    "train_networks",
    "training_presentations",
]
