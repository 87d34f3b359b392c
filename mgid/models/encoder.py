"""MGID encoder: the MNAD U-Net encoder at a constant width, followed by instance normalisation.

Three stages of (conv3x3-BN-ReLU) x2 + 2x2 max-pool, a fourth stage conv3x3-BN-ReLU-conv3x3 at 1/8
resolution, then ``InstanceNorm2d(C, affine=False)``. The instance-normalised output is both the
memory query and the feature whose covariance the BSW loss whitens; the pre-pool outputs of
stages 1-3 are the decoder's skip connections.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

KERNEL_SIZE = 3
PADDING = 1  # "same" padding for the 3x3 convolutions
NUM_POOLS = 3  # three 2x poolings: the query is at 1/8 resolution
DOWNSAMPLE = 2 ** NUM_POOLS


def conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    """conv3x3 (with bias, as the public code) - BatchNorm2d - ReLU; keeps H and W."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, KERNEL_SIZE, padding=PADDING),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def double_conv(in_channels: int, out_channels: int) -> nn.Sequential:
    """Two :func:`conv_bn_relu` layers, (B, in, H, W) -> (B, out, H, W); MNAD's ``Basic`` block."""
    return nn.Sequential(conv_bn_relu(in_channels, out_channels), conv_bn_relu(out_channels, out_channels))


class EncoderFeatures(NamedTuple):
    """What the encoder hands on.

    query: (B, C, H/8, W/8), instance-normalised (zero mean, unit variance per sample and channel).
    skips: stage 1-3 outputs before pooling, (B, C, H, W), (B, C, H/2, W/2), (B, C, H/4, W/4).
    """

    query: torch.Tensor
    skips: tuple[torch.Tensor, torch.Tensor, torch.Tensor]


class Encoder(nn.Module):
    """(B, in_channels, H, W) -> :class:`EncoderFeatures`; H and W must be multiples of 8.

    With ``in_channels=3`` and ``channels=64``: 261,184 trainable parameters.
    """

    def __init__(self, in_channels: int = 3, channels: int = 64) -> None:
        super().__init__()
        self.stage1 = double_conv(in_channels, channels)
        self.stage2 = double_conv(channels, channels)
        self.stage3 = double_conv(channels, channels)
        # MNAD's ``Basic_`` block: the last conv has no BN/ReLU after it (the public code defines
        # a BN and a ReLU here but never calls them, so they are left out).
        self.stage4 = nn.Sequential(
            conv_bn_relu(channels, channels),
            nn.Conv2d(channels, channels, KERNEL_SIZE, padding=PADDING),
        )
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2)
        self.norm = nn.InstanceNorm2d(channels, affine=False)

    def forward(self, image: torch.Tensor) -> EncoderFeatures:
        s1 = self.stage1(image)
        s2 = self.stage2(self.pool(s1))
        s3 = self.stage3(self.pool(s2))
        query = self.norm(self.stage4(self.pool(s3)))
        return EncoderFeatures(query, (s1, s2, s3))
