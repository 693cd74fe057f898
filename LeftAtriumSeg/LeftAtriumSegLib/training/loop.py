"""The training loop: one network per view, AdamW with warm-up and cosine decay, checkpoints
along the way, and a resumed run that ends with the weights of an uninterrupted one."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from ..model_file import ModelConfig
from ..network import UNet2D
from ..preprocessing import VIEW_AXES
from .augmentation import sample_batch
from .checkpoints import checkpoint_seconds, load_checkpoint, save_checkpoint
from .layout import checkpoint_path as checkpoint_in
from .data import TrainingEntry, alternatives
from .losses import Loss, dice_bce_loss
from .settings import TrainingSettings


def resolve_device(device: str) -> torch.device:
    """Where to train.

    Parameters
    ----------
    device : str
        ``auto`` (CUDA where there is a GPU, else the CPU), ``cpu``, ``cuda`` or any torch device name.

    Returns
    -------
    torch.device

    Raises
    ------
    ValueError
        ``cuda`` was asked for and there is no CUDA GPU.
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but no CUDA GPU is available (use --device cpu)")
    return torch.device(device)


def learning_rate_at(iteration: int, settings: TrainingSettings) -> float:
    """The learning rate of one step: linear warm-up, then cosine decay to zero, so training
    ends at a settled point.

    Parameters
    ----------
    iteration : int
        The step, from 0.
    settings : TrainingSettings
        ``learning_rate`` (the peak), ``warmup_iterations`` and ``iterations``.

    Returns
    -------
    float
        ``learning_rate`` x (iteration + 1) / ``warmup_iterations`` during the warm-up, then
        ``learning_rate`` x (1 + cos(pi x progress)) / 2, progress running from 0 to 1 over the
        remaining steps.
    """
    if iteration < settings.warmup_iterations:
        return settings.learning_rate * (iteration + 1) / settings.warmup_iterations
    progress = (iteration - settings.warmup_iterations) / max(1, settings.iterations - settings.warmup_iterations)
    return settings.learning_rate * 0.5 * (1 + math.cos(math.pi * progress))


def _slicings(cases: Sequence[TrainingEntry], view: str, settings: TrainingSettings) -> tuple[list[list], int]:
    """Each place of the training list sliced as ``view``'s network sees it, and the view's seed."""
    if settings.random_orientation:
        # Every view then samples the same crops; its own seed makes its network differ.
        return ([[case.in_view(name) for case in alternatives(entry) for name in VIEW_AXES] for entry in cases],
                settings.seed + list(VIEW_AXES).index(view))
    return [[case.in_view(view) for case in alternatives(entry)] for entry in cases], settings.seed


def train_network(
    cases: Sequence[TrainingEntry],
    config: ModelConfig,
    settings: TrainingSettings,
    view: str = "axial",
    checkpoint_path: Path | None = None,
    description: str = "training",
    show_progress: bool = True,
    on_iteration: Callable[[int, float], None] | None = None,
    device: str | torch.device = "cpu",
    resume: bool = False,
    loss: Loss = dice_bce_loss,
) -> UNet2D:
    """Train a fresh network for one view.

    Parameters
    ----------
    cases : sequence of TrainingEntry
        The training list in the model frame (``data.training_presentations``).
    config : ModelConfig
        Builds the network; ``slices`` is the stack depth.
    settings : TrainingSettings
        Iterations, batches, augmentation, learning rate, seed.
    view : str
        A key of ``preprocessing.VIEW_AXES``: the slicing the network learns.
    checkpoint_path : pathlib.Path, optional
        Where to save the training state, every ``settings.checkpoint_every`` iterations and at the end.
    description : str
        The progress bar's label.
    show_progress : bool
        Show a progress bar with the running loss.
    on_iteration : callable, optional
        Called after each step with (iteration from 0, the step's loss).
    device : str or torch.device
        Where the network trains; batches are sampled on the CPU.
    resume : bool
        Go on from the checkpoint at ``checkpoint_path`` where there is one; the network then
        ends with the weights an uninterrupted run would have.
    loss : callable
        (logits, targets) -> scalar to minimise (``losses.Loss``).

    Returns
    -------
    UNet2D
        The trained network, in evaluation mode, on ``device``.

    Raises
    ------
    LeftAtriumSegError
        With ``resume``: the checkpoint is unreadable, damaged or another training's.
    """
    slicings, seed = _slicings(cases, view, settings)
    checkpoint_config = replace(config, views=(view,))
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    # channels_last: oneDNN's fast path for 2D convolutions on CPUs (1.4x per step here).
    network = config.build_network().to(device, memory_format=torch.channels_last)
    optimiser = torch.optim.AdamW(network.parameters(), lr=settings.learning_rate, weight_decay=1e-4)
    first_iteration, seconds_before = 0, 0.0
    if resume and checkpoint_path is not None and checkpoint_path.exists():
        first_iteration, seconds_before = load_checkpoint(checkpoint_path, network, optimiser, rng,
                                                          checkpoint_config, settings)
    started = time.perf_counter() - seconds_before
    network.train()
    bar = tqdm(range(first_iteration, settings.iterations), desc=description, disable=not show_progress,
               dynamic_ncols=True, initial=first_iteration, total=settings.iterations)
    running_loss = None
    for iteration in bar:
        for group in optimiser.param_groups:
            group["lr"] = learning_rate_at(iteration, settings)
        images, labels = sample_batch(slicings, config, settings, rng)
        images = images.to(device, memory_format=torch.channels_last)
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=settings.bfloat16):
            logits = network(images)
        step_loss = loss(logits.float(), labels.to(device))
        optimiser.zero_grad(set_to_none=True)
        step_loss.backward()
        optimiser.step()
        running_loss = step_loss.item() if running_loss is None else 0.98 * running_loss + 0.02 * step_loss.item()
        bar.set_postfix(loss=f"{running_loss:.3f}")
        if on_iteration is not None:
            on_iteration(iteration, step_loss.item())
        done = iteration + 1
        if checkpoint_path is not None and (done % settings.checkpoint_every == 0 or done == settings.iterations):
            save_checkpoint(checkpoint_path, network, optimiser, rng, done, time.perf_counter() - started,
                            checkpoint_config, settings)
    return network.eval()


def train_networks(
    cases: Sequence[TrainingEntry],
    config: ModelConfig,
    settings: TrainingSettings,
    output_dir: Path,
    description: str = "",
    show_progress: bool = True,
    device: str | torch.device = "cpu",
    resume: bool = False,
    loss: Loss = dice_bce_loss,
) -> tuple[nn.ModuleDict, dict[str, float]]:
    """Train one network per view of ``config``, each with ``train_network``.

    Parameters
    ----------
    cases, config, settings, show_progress, device, resume, loss
        As for ``train_network``.
    output_dir : pathlib.Path
        An existing folder; each view's checkpoint is ``checkpoint_VIEW.safetensors`` there.
    description : str
        Prefix of each view's progress bar label.

    Returns
    -------
    networks : torch.nn.ModuleDict
        The trained networks by view, in evaluation mode.
    seconds : dict of str to float
        Each view's training seconds, over all the sittings of a resumed run.

    Raises
    ------
    LeftAtriumSegError
        With ``resume``: a checkpoint is unreadable, damaged or another training's.
    """
    networks, seconds = nn.ModuleDict(), {}
    for view in config.views:
        checkpoint_path = checkpoint_in(output_dir, view)
        networks[view] = train_network(
            cases, config, settings, view, checkpoint_path=checkpoint_path, description=f"{description}{view}",
            show_progress=show_progress, device=device, resume=resume, loss=loss,
        )
        seconds[view] = checkpoint_seconds(checkpoint_path)
    return networks, seconds
