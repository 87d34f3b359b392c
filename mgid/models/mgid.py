"""MGIDNet: encoder -> memory -> decoder, predicting the rain layer R of an image I; B = I - R."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal, get_args

import torch
import torch.nn.functional as F
from torch import nn

from mgid.config.literals import check_literals
from mgid.errors import InputError
from mgid.models.decoder import UPSAMPLE_MODES, ConcatOrder, Decoder, UpsampleMode  # noqa: F401  (UPSAMPLE_MODES)
from mgid.models.encoder import DOWNSAMPLE, Encoder, EncoderFeatures, NormStats
from mgid.models.memory import MemoryModule, MemoryOutput

PadMode = Literal["reflect", "replicate"]
PAD_MODES = get_args(PadMode)


@dataclass
class ModelConfig:
    """Architecture and memory options of `MGIDNet`.

    Attributes:
        image_channels: channels of the input image and of the predicted rain layer (3, BGR or RGB
            as the data feeds it; the public code feeds BGR).
        channels: width C of every layer; the query has C channels, the memory output 2C.
        memory_items: M, the number of memory items (training code 20; its evaluation script 30).
        double_tanh: apply tanh a second time to the decoder's (already tanh) output before
            subtracting, as the public code does; this bounds R to +-tanh(1) = +-0.76. Off: R is the
            decoder output, in (-1, 1).
        grad_through_weights: memory read passes the gradient through its softmax weights (MNAD
            detaches them: False).
        update_max_over_assigned: memory update normalises by the max over each item's assigned
            queries (the paper) rather than over all queries (public code: False).
        upsample: the decoder's 2x upsampling, "transpose" (the paper's ConvTranspose2d) or
            "resize_conv" (nearest resize + conv3x3: no checkerboard texture, same parameter count).
        pad_mode: how inputs whose H or W is not a multiple of 8 are padded (bottom/right) before
            the network and cropped back after: "reflect" (falls back to "replicate" where the
            image is too small to reflect) or "replicate".
        concat_order: the decoder's concatenation of the upsampled features and the encoder skip:
            "upsampled_first" ([upsampled, skip]; the shipped weights) or "skip_first" ([skip, upsampled], the
            public code's, which weights converted from it need, `mgid.models.official`; the paper recipe). Only
            the order of the decoder blocks' input channels differs.
    """

    image_channels: int = 3
    channels: int = 64
    memory_items: int = 20
    double_tanh: bool = True
    grad_through_weights: bool = False
    update_max_over_assigned: bool = False
    pad_mode: PadMode = "reflect"
    upsample: UpsampleMode = "transpose"
    concat_order: ConcatOrder = "upsampled_first"

    def __post_init__(self) -> None:
        if self.image_channels < 1 or self.channels < 1:
            raise InputError(f"image_channels and channels must be positive, got {self.image_channels}, "
                             f"{self.channels}")
        if self.memory_items < 2:
            raise InputError(f"memory_items must be >= 2 (separateness needs two items), got {self.memory_items}")
        check_literals(self)  # upsample, pad_mode, concat_order: from their Literal types

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelConfig:
        return cls(**values)


@dataclass
class MGIDOutput:
    """Outputs of one `MGIDNet` forward pass for an image (B, 3, H, W).

    rain: R (B, 3, H, W), the layer subtracted from the image (after the second tanh when
        ``double_tanh``), so ``background + rain == image``.
    background: B = I - R (B, 3, H, W), the de-rained image.
    query: the instance-normalised encoder features (B, C, H'/8, W'/8), H' and W' the padded
        size; the BSW loss whitens their covariance.
    compactness, separateness: 0-dim memory losses, ``None`` when not computed (inference).
    """

    rain: torch.Tensor
    background: torch.Tensor
    query: torch.Tensor
    compactness: torch.Tensor | None = None
    separateness: torch.Tensor | None = None


def image_size_problem(height: int, width: int) -> str | None:
    """Why an image of ``height`` x ``width`` is too small for `MGIDNet`, or None when it is not: the instance
    norm (and the BSW covariance) need at least two query pixels, i.e. H*W >= 128 after padding to multiples
    of 8. Shared by every check of an input's size (the network, the ONNX backend, image headers)."""
    # no int(): under torch.export the sizes are symbolic, and int() would fix them to the example's
    ph, pw = -(-height // DOWNSAMPLE), -(-width // DOWNSAMPLE)  # query size after padding
    if ph * pw < 2:
        return (f"image {height}x{width} is too small: the network needs H*W >= {2 * DOWNSAMPLE ** 2} after "
                f"padding to multiples of {DOWNSAMPLE} (e.g. 8x16)")
    return None


def pad_to_multiple(image: torch.Tensor, multiple: int, mode: str = "reflect") -> torch.Tensor:
    """Pad (B, C, H, W) at the bottom and right so H and W are multiples of ``multiple``.

    Reflect padding needs the pad to be smaller than the side; where it is not, replicate is used.
    """
    h, w = image.shape[-2:]
    pad_h, pad_w = -h % multiple, -w % multiple
    if pad_h == 0 and pad_w == 0:
        return image
    if mode == "reflect" and (pad_h >= h or pad_w >= w):
        mode = "replicate"
    return F.pad(image, (0, pad_w, 0, pad_h), mode=mode)


class MGIDNet(nn.Module):
    """Memory-guided de-raining network (817,987 trainable parameters at the defaults).

    ``forward(image)`` with image (B, 3, H, W) in [-1, 1], any H, W (padded to multiples of 8, at
    least 2 query pixels, i.e. H*W >= 128 after padding). In training mode each call reads the
    memory and then updates it, so frame 1 then frame 2 of a pair read P then P'. In eval mode
    (or ``update_memory=False``) the memory is only read.

    Args:
        config: `ModelConfig`; defaults to the public architecture.
        generator: seeds the initial memory items (network weights use the global RNG as
            ``nn.Module`` does).
    """

    def __init__(self, config: ModelConfig | None = None, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.config = config if config is not None else ModelConfig()
        cfg = self.config
        self.encoder = Encoder(cfg.image_channels, cfg.channels)
        self.memory = MemoryModule(
            cfg.memory_items, cfg.channels,
            grad_through_weights=cfg.grad_through_weights,
            update_max_over_assigned=cfg.update_max_over_assigned,
            generator=generator,
        )
        self.decoder = Decoder(cfg.channels, cfg.image_channels, cfg.upsample, cfg.concat_order)

    def _check_image(self, image: torch.Tensor) -> None:
        if not isinstance(image, torch.Tensor):
            raise TypeError(f"image must be a torch.Tensor (B, {self.config.image_channels}, H, W), "
                            f"got {type(image).__name__}")
        if image.dim() != 4 or image.shape[1] != self.config.image_channels:
            hint = " (add a batch dimension with image[None])" if image.dim() == 3 else ""
            raise InputError(f"image must have shape (B, {self.config.image_channels}, H, W), got "
                             f"{tuple(image.shape)}{hint}")
        if not image.is_floating_point():
            raise TypeError(f"image must be a floating tensor in [-1, 1], got dtype {image.dtype}")
        problem = image_size_problem(*image.shape[-2:])
        if problem is not None:
            raise InputError(problem)

    def forward(
        self,
        image: torch.Tensor,
        update_memory: bool | None = None,
        memory_losses: bool | None = None,
        norm_stats: NormStats | tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> MGIDOutput:
        """De-rain a batch of images.

        Args:
            image: (B, 3, H, W) floating in [-1, 1], any H, W (padded to multiples of 8; at least 2 query
                pixels after padding).
            update_memory: read and then update the memory items; defaults to ``self.training``.
            memory_losses: compute compactness/separateness; defaults to ``update_memory``
                (ask for them explicitly to get a validation loss in eval mode).
            norm_stats: None: the encoder's instance norm uses the query's own statistics. Else
                (mean, var) (a `mgid.models.encoder.NormStats`), each (B, C, 1, 1), to
                normalise the pre-norm query with instead, e.g. those of the whole image ``image`` is
                a tile of (see `pre_norm_query`).

        Returns:
            The `MGIDOutput`: rain layer, background ``image - rain``, query and memory losses.

        Raises:
            TypeError: ``image`` is not a floating tensor.
            InputError: ``image`` is not (B, 3, H, W), is too small, or ``norm_stats`` has a wrong shape
                (a ``ValueError``).
        """
        self._check_image(image)
        if update_memory is None:
            update_memory = self.training
        h, w = image.shape[-2:]
        padded = pad_to_multiple(image, DOWNSAMPLE, self.config.pad_mode)
        rain, features, mem = self._run(padded, norm_stats, update_memory, memory_losses)
        rain = rain[..., :h, :w]
        return MGIDOutput(
            rain=rain,
            background=image - rain,
            query=features.query,
            compactness=mem.compactness,
            separateness=mem.separateness,
        )

    def _run(self, padded: torch.Tensor, norm_stats: NormStats | tuple[torch.Tensor, torch.Tensor] | None,
             update_memory: bool, memory_losses: bool | None) -> tuple[torch.Tensor, EncoderFeatures, MemoryOutput]:
        """(rain layer (B, 3, H, W), encoder features, memory output) of ``padded`` (H, W multiples of 8)."""
        features = self.encoder(padded, norm_stats)
        mem = self.memory(features.query, update=update_memory, with_losses=memory_losses)
        rain = self.decoder(mem.features, features.skips)
        if self.config.double_tanh:
            rain = torch.tanh(rain)  # the public code's second tanh: |R| <= tanh(1)
        return rain, features, mem

    def padded_rain(self, padded: torch.Tensor,
                    norm_stats: NormStats | tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """The rain layer (B, 3, H, W) of ``padded`` (B, 3, H, W) whose H and W are already multiples of 8, memory
        read only: `forward` without its padding, cropping and checks, for a graph that pads the image itself
        (`mgid.derain.onnx_export`: padding inside the graph)."""
        return self._run(padded, norm_stats, False, False)[0]

    def pre_norm_query(self, image: torch.Tensor) -> torch.Tensor:
        """The encoder's query before the instance norm, (B, C, H'/8, W'/8) for ``image`` (B, 3, H, W)
        padded as `forward` pads it (H', W' the padded size). Its per-sample, per-channel mean and
        biased variance over H'/8 x W'/8 are the statistics `forward` normalises with by default."""
        self._check_image(image)
        return self.encoder.pre_norm_features(pad_to_multiple(image, DOWNSAMPLE, self.config.pad_mode))[0]

    def norm_statistics(self, image: torch.Tensor) -> NormStats:
        """The instance-norm statistics (mean, var), each (B, C, 1, 1), of ``image``'s pre-norm query:
        ``forward(image, norm_stats=net.norm_statistics(image))`` equals ``forward(image)`` to rounding."""
        return NormStats.of(self.pre_norm_query(image))

    @torch.no_grad()
    def derain(self, image: torch.Tensor) -> torch.Tensor:
        """The background B of an image, in eval mode, memory read only, without gradients.

        The module's train/eval mode is restored afterwards.

        Args:
            image: (B, 3, H, W) floating in [-1, 1].

        Returns:
            B, (B, 3, H, W), not clamped to [-1, 1].

        Raises:
            TypeError, InputError: as `forward`.
        """
        was_training = self.training
        self.eval()
        try:
            return self.forward(image, update_memory=False, memory_losses=False).background
        finally:
            self.train(was_training)
