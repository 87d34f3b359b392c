"""MGID encoder: the MNAD U-Net encoder at a constant width, followed by instance normalisation.

Three stages of (conv3x3-BN-ReLU) x2 + 2x2 max-pool, a fourth stage conv3x3-BN-ReLU-conv3x3 at 1/8 resolution, then
``InstanceNorm2d(C, affine=False)``: the normalised output is the memory query and the BSW loss's feature; the
pre-pool outputs of stages 1-3 are the skips. `Encoder.pre_norm_features`, `Encoder.norm_statistics` and
`Encoder.normalise` let a tile be normalised with a larger image's statistics (`mgid.derain.tiling`).
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import torch
from torch import nn

from mgid.errors import InputError

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


def sequential_layers(module: nn.Module) -> Iterator[nn.Module]:
    """The layers of ``module`` in the order it runs them: nested ``nn.Sequential`` containers are expanded,
    any other module is one layer. Running ``for layer in sequential_layers(m): x = layer(x)`` in the caller's
    own frame computes ``m(x)`` with every intermediate freed as soon as the next layer has read it."""
    if isinstance(module, nn.Sequential):
        for child in module:
            yield from sequential_layers(child)
    else:
        yield module


def double_conv(in_channels: int, out_channels: int) -> nn.Sequential:
    """Two `conv_bn_relu` layers, (B, in, H, W) -> (B, out, H, W); MNAD's ``Basic`` block."""
    return nn.Sequential(conv_bn_relu(in_channels, out_channels), conv_bn_relu(out_channels, out_channels))


class NormStats(NamedTuple):
    """Per-sample, per-channel statistics of the pre-norm query, as the instance norm uses them.

    mean: (B, C, 1, 1); var: (B, C, 1, 1), the biased variance (divided by the pixel count), >= 0.
    Normalised query = (features - mean) / sqrt(var + eps), eps = `Encoder.norm_eps`.
    """

    mean: torch.Tensor
    var: torch.Tensor

    @classmethod
    def of(cls, features: torch.Tensor) -> NormStats:
        """The statistics of pre-norm ``features`` (B, C, h, w) over h x w (what InstanceNorm2d computes)."""
        if not isinstance(features, torch.Tensor) or features.dim() != 4:
            shape = tuple(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__
            raise InputError(f"features must have shape (B, C, h, w), got {shape}")
        return cls(features.mean(dim=(2, 3), keepdim=True),
                   features.var(dim=(2, 3), unbiased=False, keepdim=True))


class EncoderFeatures(NamedTuple):
    """What the encoder hands on.

    query: (B, C, H/8, W/8), instance-normalised (zero mean, unit variance per sample and channel).
    skips: stage 1-3 outputs before pooling, [(B, C, H, W), (B, C, H/2, W/2), (B, C, H/4, W/4)]; a list,
        which the decoder empties as it uses them (`mgid.models.Decoder`), so each is freed once used.
    """

    query: torch.Tensor
    skips: list[torch.Tensor]


class Encoder(nn.Module):
    """(B, in_channels, H, W) -> `EncoderFeatures`; H and W must be multiples of 8.

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

    @property
    def channels(self) -> int:
        """C, the query's channel count."""
        return self.norm.num_features

    @property
    def norm_eps(self) -> float:
        """The instance norm's epsilon (added to the variance)."""
        return float(self.norm.eps)

    def pre_norm_features(self, image: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(query before the instance norm (B, C, H/8, W/8), skips as in `EncoderFeatures`).

        The stages run layer by layer (`sequential_layers`) rather than as whole modules, so each activation is
        freed as soon as the next layer has read it: at most a layer's input and output are alive at once (a
        stage called as one module keeps its input until its last layer returns).
        """
        skips: list[torch.Tensor] = []
        x = image
        for stage in (self.stage1, self.stage2, self.stage3):
            for layer in sequential_layers(stage):
                x = layer(x)
            skips.append(x)
            x = self.pool(x)
        for layer in sequential_layers(self.stage4):
            x = layer(x)
        return x, skips

    def norm_statistics(self, image: torch.Tensor) -> NormStats:
        """The `NormStats` (mean, var: (B, C, 1, 1)) the instance norm takes over ``image``'s query."""
        return NormStats.of(self.pre_norm_features(image)[0])

    def check_norm_stats(self, norm_stats: NormStats | tuple[torch.Tensor, torch.Tensor], batch: int) -> NormStats:
        """``norm_stats`` as `NormStats` after checking it: (mean, var), each (batch, C, 1, 1).

        Raises TypeError for anything but a pair of floating tensors, ValueError for a wrong shape.
        """
        c = self.channels
        if not isinstance(norm_stats, tuple) or len(norm_stats) != 2:
            raise TypeError(f"norm_stats must be a pair (mean, var) of tensors of shape (B, C, 1, 1) = "
                            f"({batch}, {c}, 1, 1), got {type(norm_stats).__name__}")
        for name, t in zip(NormStats._fields, norm_stats):
            if not isinstance(t, torch.Tensor) or not t.is_floating_point():
                raise TypeError(f"norm_stats.{name} must be a floating tensor of shape (B, C, 1, 1) = "
                                f"({batch}, {c}, 1, 1), got {type(t).__name__}"
                                + (f" of dtype {t.dtype}" if isinstance(t, torch.Tensor) else ""))
            if tuple(t.shape) != (batch, c, 1, 1):
                raise InputError(f"norm_stats.{name} must have shape (B, C, 1, 1) = ({batch}, {c}, 1, 1) "
                                 f"(per sample and channel of the pre-norm query), got {tuple(t.shape)}")
        return NormStats(*norm_stats)

    def normalise(self, features: torch.Tensor,
                  norm_stats: NormStats | tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """Instance-normalise pre-norm ``features`` (B, C, h, w): by their own statistics (None), or by
        ``norm_stats`` (mean, var), each (B, C, 1, 1), e.g. those of a larger image the features are a crop of.

        Given statistics are applied in at least float32 (bf16 features under autocast are normalised in
        fp32 and returned in their dtype).
        """
        if norm_stats is None:
            return self.norm(features)
        mean, var = self.check_norm_stats(norm_stats, features.shape[0])
        wide = torch.promote_types(features.dtype, torch.float32)
        mean, var = mean.to(features.device, wide), var.to(features.device, wide)
        return ((features.to(wide) - mean) / torch.sqrt(var + self.norm_eps)).to(features.dtype)

    def forward(self, image: torch.Tensor,
                norm_stats: NormStats | tuple[torch.Tensor, torch.Tensor] | None = None) -> EncoderFeatures:
        """`EncoderFeatures` of ``image`` (B, in_channels, H, W); the query is normalised by its own
        statistics, or by ``norm_stats`` (mean, var), each (B, C, 1, 1), when given (see `normalise`)."""
        query, skips = self.pre_norm_features(image)
        return EncoderFeatures(self.normalise(query, norm_stats), skips)
