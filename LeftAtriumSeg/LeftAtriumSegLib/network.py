"""A 2.5D U-Net: a stack of neighbouring slices in, the centre slice's logits out."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


def _conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class UNet2D(nn.Module):
    """U-Net over 2D slices.

    Input ``(N, in_channels, H, W)`` with H and W multiples of ``2 ** (len(features) - 1)``;
    output ``(N, 1, H, W)`` logits for the left atrium.

    Parameters
    ----------
    in_channels : int
        Input channels: the neighbouring slices of a stack.
    features : tuple of int
        Channels per level, from the top; each level below the first halves H and W.
    """

    def __init__(self, in_channels: int, features: tuple[int, ...]):
        super().__init__()
        self.encoders = nn.ModuleList()
        channels = in_channels
        for width in features:
            self.encoders.append(_conv_block(channels, width))
            channels = width
        self.upsamplers = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for width in reversed(features[:-1]):
            self.upsamplers.append(nn.ConvTranspose2d(channels, width, 2, stride=2))
            self.decoders.append(_conv_block(2 * width, width))
            channels = width
        self.head = nn.Conv2d(channels, 1, 1)
        self.pool = nn.MaxPool2d(2)

    @property
    def size_multiple(self) -> int:
        """The input's H and W must be multiples of this (the pooling)."""
        return 2 ** len(self.upsamplers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, 1, H, W)`` of a batch ``(N, in_channels, H, W)``."""
        skips = []
        for depth, encoder in enumerate(self.encoders):
            if depth > 0:
                x = self.pool(x)
            x = encoder(x)
            skips.append(x)
        skips.pop()
        for upsample, decoder in zip(self.upsamplers, self.decoders):
            x = decoder(torch.cat([upsample(x), skips.pop()], dim=1))
        return self.head(x)


def fold_batch_norms(network: UNet2D) -> UNet2D:
    """Fold each BatchNorm into the convolution before it, in place, for inference only.

    The outputs stay the same to float rounding; each block then runs two convolutions
    instead of two convolutions and two normalisations (0.92x the prediction time on 2 CPU cores).
    The network can no longer be trained or saved as a model file afterwards.

    Returns
    -------
    UNet2D
        ``network`` itself, in eval mode.
    """
    network.eval()
    for block in network.modules():
        if isinstance(block, nn.Sequential):
            for index in range(len(block) - 1):
                if isinstance(block[index], nn.Conv2d) and isinstance(block[index + 1], nn.BatchNorm2d):
                    block[index] = fuse_conv_bn_eval(block[index], block[index + 1])
                    block[index + 1] = nn.Identity()
    return network


class TorchSliceNetwork:
    """A torch ``UNet2D`` as ``inference.predict_slices`` calls it (``inference.SliceNetwork``).

    float32 ``(N, slices, H, W)`` numpy in, logits ``(N, 1, H, W)`` numpy out, run on the
    network's device. For networks in training and GPU benchmarks; ``segment`` runs the model
    file with ONNX Runtime (``onnx_network``).

    Parameters
    ----------
    network : UNet2D
        Set to eval mode here.
    """

    def __init__(self, network: UNet2D):
        self.network = network.eval()
        self.size_multiple = network.size_multiple
        self.device = next(network.parameters()).device

    @torch.inference_mode()
    def __call__(self, batch: np.ndarray) -> np.ndarray:
        tensor = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device)
        return self.network(tensor.contiguous(memory_format=torch.channels_last)).float().cpu().numpy()
