"""MGID decoder: the MNAD U-Net decoder at a constant width, predicting the rain layer.

On the memory output (B, 2C, h, w): block(2C -> C); then three times: up (2x), concat the matching
encoder skip (C + C channels), and a block (2C -> C), the last "block" being the head
conv-BN-ReLU (2C -> C), conv-BN-ReLU (C -> C), conv (C -> out), tanh.

The concatenation's order (`ConcatOrder`) only permutes the input channels of the three blocks' first
convolutions: ``[upsampled, skip]`` (this package's, which the shipped weights use) or ``[skip, upsampled]``
(the public code's, which weights converted from it need: `mgid.models.official`).
"""
from __future__ import annotations

from typing import Literal, get_args

import torch
from torch import nn

from mgid.errors import InputError
from mgid.models.encoder import KERNEL_SIZE, PADDING, conv_bn_relu, double_conv, sequential_layers

#: Ways to double the resolution in the decoder (`ModelConfig.upsample`).
UpsampleMode = Literal["transpose", "resize_conv"]
UPSAMPLE_MODES = get_args(UpsampleMode)
#: Order of the decoder's concatenation of the upsampled features and the encoder skip (`ModelConfig.concat_order`).
ConcatOrder = Literal["upsampled_first", "skip_first"]
CONCAT_ORDERS = get_args(ConcatOrder)


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
        raise InputError(f"upsample mode must be one of {UPSAMPLE_MODES}, got {mode!r}")
    return nn.Sequential(*up, nn.BatchNorm2d(channels), nn.ReLU(inplace=True))


class Decoder(nn.Module):
    """(memory features (B, 2C, h, w), skips) -> (B, out_channels, 8h, 8w) in (-1, 1) (tanh).

    ``skips`` are the encoder's stage 1-3 features, [(B, C, 8h, 8w), (B, C, 4h, 4w), (B, C, 2h, 2w)], a list
    the decoder empties (see `forward`).
    With ``channels=64`` and ``out_channels=3``: 556,803 trainable parameters (either upsample mode, either
    ``concat_order``). ``concat_order`` is one of `CONCAT_ORDERS` (else ValueError): "upsampled_first" concatenates
    ``[upsampled, skip]``, "skip_first" ``[skip, upsampled]``.
    """

    def __init__(self, channels: int = 64, out_channels: int = 3, upsample_mode: str = "transpose",
                 concat_order: ConcatOrder = "upsampled_first") -> None:
        super().__init__()
        if concat_order not in CONCAT_ORDERS:
            raise InputError(f"concat_order must be one of {CONCAT_ORDERS}, got {concat_order!r}")
        self.skip_first = concat_order == "skip_first"
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

    def forward(self, memory_features: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        """The rain layer (B, out, 8h, 8w) of ``memory_features`` (B, 2C, h, w) and the encoder's ``skips``.

        ``skips`` ([s1, s2, s3], `EncoderFeatures.skips`) is emptied: each skip is popped when it is used, so
        it is freed as soon as it is concatenated (when the caller holds no other reference), and the layers
        run one by one (`sequential_layers`) so every intermediate is freed as soon as the next layer has read
        it. At full resolution this leaves the concatenation and one layer's output alive, not also the
        skip, the block's input and a BatchNorm input: the same arithmetic with about 40 % less peak memory.
        """
        x = memory_features
        for layer in sequential_layers(self.bottleneck):
            x = layer(x)
        for up, block in ((self.up3, self.block3), (self.up2, self.block2), (self.up1, self.head)):
            for layer in sequential_layers(up):
                x = layer(x)
            # the popped skip is held by no name, so it is freed as soon as it is concatenated
            x = torch.cat([skips.pop(), x] if self.skip_first else [x, skips.pop()], dim=1)
            for layer in sequential_layers(block):
                x = layer(x)
        return x
