"""Checkpoints: all that one view's training needs to go on exactly where it stopped.

A checkpoint is a safetensors file: the network's weights (``network.NAME``), AdamW's moments
(``optimiser.INDEX.KEY``) and torch's random state as tensors; the iterations done, the training
seconds so far, the crop sampler's random state, the config and the settings as metadata.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..errors import LeftAtriumSegError
from ..io import atomic_output
from ..model_file import SAFETENSORS_READ_ERRORS, ModelConfig
from ..network import UNet2D
from .settings import TrainingSettings, as_recorded_now

CHECKPOINT_FORMAT = "leftatriumseg-checkpoint-1"


def save_checkpoint(path: Path, network: UNet2D, optimiser: torch.optim.Optimizer, rng: np.random.Generator,
                    iterations_done: int, seconds: float, config: ModelConfig, settings: TrainingSettings) -> None:
    """Write one view's training state, beside ``path`` first, then renamed over it.

    Parameters
    ----------
    path : pathlib.Path
        The checkpoint file; replaced if it exists.
    network : UNet2D
        The view's network (any device).
    optimiser : torch.optim.Optimizer
        Its AdamW optimiser.
    rng : numpy.random.Generator
        The crop sampler's random state.
    iterations_done : int
        Optimiser steps taken.
    seconds : float
        Training seconds so far, over all sittings.
    config : ModelConfig
        The view's config (``views`` holding that view alone).
    settings : TrainingSettings
        The training's settings.

    Raises
    ------
    OSError
        The file cannot be written (``io.atomic_output``).
    """
    tensors = {f"network.{name}": tensor.detach().cpu().contiguous() for name, tensor in network.state_dict().items()}
    for index, state in optimiser.state_dict()["state"].items():
        tensors.update({f"optimiser.{index}.{key}": value.detach().cpu().contiguous() for key, value in state.items()})
    tensors["torch_rng_state"] = torch.get_rng_state()
    metadata = {"format": CHECKPOINT_FORMAT, "iterations_done": str(iterations_done), "seconds": f"{seconds:.1f}",
                "numpy_rng_state": json.dumps(rng.bit_generator.state), "config": config.to_json(),
                "settings": json.dumps(settings.__dict__)}
    with atomic_output(path, overwrite=True) as partial:
        save_file(tensors, str(partial), metadata=metadata)


def _checkpoint_metadata(path: Path) -> dict[str, str]:
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except SAFETENSORS_READ_ERRORS as error:
        raise LeftAtriumSegError(f"{path}: not a readable checkpoint ({error}); train into a new folder") from None
    if metadata.get("format") != CHECKPOINT_FORMAT:
        raise LeftAtriumSegError(f"{path}: not a checkpoint of this version (format {metadata.get('format')!r}); "
                                 "train into a new folder")
    return metadata


def _damaged_checkpoint(path: Path, error: Exception) -> LeftAtriumSegError:
    # Only a damaged or hand-edited checkpoint gets here; torch's and json's messages can run over lines.
    reason = " ".join(f"{type(error).__name__}: {error}".split())
    return LeftAtriumSegError(f"{path}: damaged checkpoint ({reason}); train into a new folder")


def checkpoint_seconds(path: Path) -> float:
    """Training seconds a view had taken, over all sittings, when its checkpoint was written.

    Parameters
    ----------
    path : pathlib.Path
        A checkpoint file.

    Returns
    -------
    float
        Seconds, to 0.1 s.

    Raises
    ------
    LeftAtriumSegError
        The file is no readable checkpoint of this format, or lacks the seconds.
    """
    metadata = _checkpoint_metadata(path)
    try:
        return float(metadata["seconds"])
    except (KeyError, ValueError) as error:
        raise _damaged_checkpoint(path, error) from None


def check_checkpoint(path: Path, config: ModelConfig, settings: TrainingSettings) -> dict[str, str]:
    """A checkpoint's metadata, once it is known to be of this training.

    Parameters
    ----------
    path : pathlib.Path
        The checkpoint file.
    config : ModelConfig
        The model's config; the checkpoint's is its view's (one of ``config.views``).
    settings : TrainingSettings
        Must be the checkpoint's.

    Raises
    ------
    LeftAtriumSegError
        The file is no readable checkpoint, or was written with another config or other settings.
    """
    metadata = _checkpoint_metadata(path)
    try:
        stored = ModelConfig.from_json(metadata["config"])
        same_training = (set(stored.views) <= set(config.views) and stored == replace(config, views=stored.views)
                         and as_recorded_now(json.loads(metadata["settings"])) == json.loads(json.dumps(settings.__dict__)))
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise _damaged_checkpoint(path, error) from None
    if not same_training:
        raise LeftAtriumSegError(f"{path}: written by a training with other settings; resume needs the same ones")
    return metadata


def load_checkpoint(path: Path, network: UNet2D, optimiser: torch.optim.Optimizer, rng: np.random.Generator,
                    config: ModelConfig, settings: TrainingSettings) -> tuple[int, float]:
    """Restore a ``save_checkpoint`` into a fresh network, optimiser and sampler, in place.

    Parameters
    ----------
    path : pathlib.Path
        The checkpoint file.
    network : UNet2D
        A network built from ``config``; its weights are replaced.
    optimiser : torch.optim.Optimizer
        AdamW over ``network``'s parameters; its moments are replaced.
    rng : numpy.random.Generator
        The crop sampler; its state is replaced. Torch's global random state is restored too.
    config : ModelConfig
        The view's config, which must be the checkpoint's.
    settings : TrainingSettings
        Must be the checkpoint's.

    Returns
    -------
    iterations_done : int
        Optimiser steps the checkpoint had taken.
    seconds : float
        Training seconds so far.

    Raises
    ------
    LeftAtriumSegError
        The file is no readable checkpoint, was written with another config or other settings,
        or is damaged (the message, one line, says what broke).
    """
    metadata = check_checkpoint(path, config, settings)
    try:
        with safe_open(str(path), framework="pt") as handle:
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
        network.load_state_dict({name.removeprefix("network."): tensor for name, tensor in tensors.items()
                                 if name.startswith("network.")})
        moments: dict[int, dict[str, torch.Tensor]] = {}
        for name, tensor in tensors.items():
            if name.startswith("optimiser."):
                _, index, key = name.split(".")
                moments.setdefault(int(index), {})[key] = tensor
        optimiser.load_state_dict({"state": moments, "param_groups": optimiser.state_dict()["param_groups"]})
        torch.set_rng_state(tensors["torch_rng_state"])
        rng.bit_generator.state = json.loads(metadata["numpy_rng_state"])
        return int(metadata["iterations_done"]), float(metadata["seconds"])
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise _damaged_checkpoint(path, error) from None
