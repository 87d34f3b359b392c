"""Tiny networks and images the tests of `mgid.derain` share: weights of an untrained 8-channel MGIDNet,
smooth random images, BatchNorm statistics set so eval-mode outputs depend on the input."""
from __future__ import annotations

from pathlib import Path

import torch

from mgid.checkpoint import save_checkpoint
from mgid.models import MGIDNet, ModelConfig

TINY = ModelConfig(channels=8, memory_items=4)


def tiny_weights(folder: Path, seed: int = 0) -> Path:
    """A tiny untrained MGIDNet saved as ``folder/tiny.safetensors`` + ``tiny.json``."""
    torch.manual_seed(seed)
    net = MGIDNet(TINY)
    return save_checkpoint(folder, net, None, {"config": {"model": TINY.to_dict()}}, names=("tiny",))["model"]


def smooth_image(h: int, w: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.avg_pool2d(torch.rand(1, 3, h, w, generator=g) * 2 - 1, 5, 1, 2)


def calibrated(net: MGIDNet) -> MGIDNet:
    """Set BatchNorm running statistics from a few random images so eval-mode activations are O(1).

    (A freshly initialised net has running mean 0 / variance 1: its output barely depends on the input,
    which would make any tiling test pass trivially.)
    """
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average
    net.train()
    with torch.no_grad():
        net(smooth_image(64, 64, seed=7).repeat(2, 1, 1, 1), update_memory=False, memory_losses=False)
    return net.eval()
