"""The U-Net's shapes, and folding its BatchNorms for inference."""

import torch
from LeftAtriumSegLib.network import UNet2D, fold_batch_norms
from torch import nn


def _trained_looking_network() -> UNet2D:
    """A small U-Net whose BatchNorms hold non-trivial statistics, as after training."""
    torch.manual_seed(0)
    network = UNet2D(in_channels=3, features=(4, 8, 16))
    for norm in network.modules():
        if isinstance(norm, nn.BatchNorm2d):
            norm.running_mean.uniform_(-1, 1)
            norm.running_var.uniform_(0.5, 2)
            norm.weight.data.uniform_(0.5, 1.5)
            norm.bias.data.uniform_(-0.5, 0.5)
    return network.eval()


def test_output_has_the_input_size():
    network = UNet2D(in_channels=3, features=(4, 8, 16)).eval()
    assert network.size_multiple == 4
    with torch.no_grad():
        assert network(torch.randn(2, 3, 24, 32)).shape == (2, 1, 24, 32)


def test_folding_batch_norms_keeps_the_outputs():
    network = _trained_looking_network()
    stacks = torch.randn(2, 3, 16, 20)
    with torch.no_grad():
        expected = network(stacks)
        folded = fold_batch_norms(network)
        assert not any(isinstance(module, nn.BatchNorm2d) for module in folded.modules())
        torch.testing.assert_close(folded(stacks), expected, rtol=1e-4, atol=1e-5)
