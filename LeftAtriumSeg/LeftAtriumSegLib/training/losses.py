"""Training losses: each maps a batch's logits and targets to a scalar to minimise."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

# (logits, targets) -> scalar loss; both float32 ``(N, 1, H, W)``, targets 0 or 1.
Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def dice_bce_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy plus soft Dice over the whole batch; the Dice term counters the ~1 %
    foreground. Cross-entropy alone did no better (docs/model-development.md, "Training variants").

    Parameters
    ----------
    logits : torch.Tensor
        float32 ``(N, 1, H, W)``, the networks' output before the logistic function.
    target : torch.Tensor
        float32, same shape, 0 or 1.

    Returns
    -------
    torch.Tensor
        A scalar: mean binary cross-entropy + (1 - soft Dice), soft Dice smoothed by 1.
    """
    probabilities = torch.sigmoid(logits)
    intersection = (probabilities * target).sum()
    soft_dice = (2 * intersection + 1) / (probabilities.sum() + target.sum() + 1)
    return F.binary_cross_entropy_with_logits(logits, target) + (1 - soft_dice)
