"""MGID decoder: the MNAD U-Net decoder at a constant width, predicting the rain layer.

On the memory output (B, 2C, h, w): block(2C -> C); then three times: up (2x), concat the matching
encoder skip (C + C channels), and a block (2C -> C), the last "block" being the head
conv-BN-ReLU (2C -> C), conv-BN-ReLU (C -> C), conv (C -> out), tanh.
"""
from __future__ import annotations

from typing import Literal, get_args

import torch
from torch import nn

from mgid.models.encoder import KERNEL_SIZE, PADDING, conv_bn_relu, double_conv

#: Ways to double the resolution in the decoder (`ModelConfig.upsample`).
UpsampleMode = Literal["transpose", "resize_conv"]
UPSAMPLE_MODES = get_args(UpsampleMode)


def upsample(channels: int, mode: str = "transpose") -> nn.Sequential:
    """2x up - BN - ReLU: (B, C, h, w) -> (B, C, 2h, 2w).

    ``"transpose"``: ConvTranspose2d(k3, s2, p1, output_padding 1), the paper's layer. Its kernel
    overlaps unevenly on a stride-2 grid, which leaves a checkerboard texture until training has
    balanced it out. ``"resize_conv"``: nearest-neighbour 2x resize then conv3x3 (Odena et al.,
    Distill 2016), the same parameter count without that texture.
    """
    if mode == "transpose":
        up: list[nn.Module] = [nn.ConvTranspose2d(channels, channels, KERNEL_SIZE, stride=2, padding=PADDING,
                                                  output_padding=1)]
    elif mode == "resize_conv":
        up = [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(channels, channels, KERNEL_SIZE, padding=PADDING)]
    else:
        raise ValueError(f"upsample mode must be one of {UPSAMPLE_MODES}, got {mode!r}")
    return nn.Sequential(*up, nn.BatchNorm2d(channels), nn.ReLU(inplace=True))


class Decoder(nn.Module):
    """(memory features (B, 2C, h, w), skips) -> (B, out_channels, 8h, 8w) in (-1, 1) (tanh).

    ``skips`` are the encoder's stage 1-3 features, (B, C, 8h, 8w), (B, C, 4h, 4w), (B, C, 2h, 2w).
    With ``channels=64`` and ``out_channels=3``: 556,803 trainable parameters (either upsample mode).
    """

    def __init__(self, channels: int = 64, out_channels: int = 3, upsample_mode: str = "transpose") -> None:
        super().__init__()
        self.bottleneck = double_conv(2 * channels, channels)  # on concat[q_hat, read]
        self.up3 = upsample(channels, upsample_mode)
        self.block3 = double_conv(2 * channels, channels)
        self.up2 = upsample(channels, upsample_mode)
        self.block2 = double_conv(2 * channels, channels)
        self.up1 = upsample(channels, upsample_mode)
        self.head = nn.Sequential(
            conv_bn_relu(2 * channels, channels),
            conv_bn_relu(channels, channels),
            nn.Conv2d(channels, out_channels, KERNEL_SIZE, padding=PADDING),
            nn.Tanh(),
        )

    def forward(
        self, memory_features: torch.Tensor, skips: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    ) -> torch.Tensor:
        s1, s2, s3 = skips
        x = self.bottleneck(memory_features)
        x = self.block3(torch.cat([self.up3(x), s3], dim=1))
        x = self.block2(torch.cat([self.up2(x), s2], dim=1))
        return self.head(torch.cat([self.up1(x), s1], dim=1))
