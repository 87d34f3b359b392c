"""`MGIDNet` frozen for inference: BatchNorm folded into the convolutions, ReLU and the decoder's concatenations
fused into them, weights stored once in the arithmetic and memory format that runs.

`InferenceGraph` runs the network's eval-mode arithmetic (memory read only) and differs from `MGIDNet.forward`
under the same precision by rounding only; it holds copies of the weights, so later changes to the network are
not seen. `fused_cpu_convolutions` says whether the oneDNN fused convolutions are available. What is folded and
fused: docs/KERNELS.md, "Design notes".
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mgid import ops
from mgid.models.encoder import DOWNSAMPLE, NormStats, sequential_layers
from mgid.models.mgid import MGIDNet, ModelConfig, pad_to_multiple
from mgid.precision import nnpack_available, resolve_precision

#: The compute dtype of each inference precision.
GRAPH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


@functools.cache
def fused_cpu_convolutions(dtype: torch.dtype = torch.float32) -> bool:
    """Whether oneDNN's fused convolution ops (``mkldnn::_convolution_pointwise`` and its transposed twin, which run
    a convolution with its ReLU and sum as post-ops) run ``dtype`` here: torch has them and, for bfloat16, the CPU
    has the instructions oneDNN's bf16 convolutions need (AVX512-BW/VL/DQ or AVX-NE-CONVERT; an AVX2-only CPU has
    not, and the graph then runs ``F.conv2d``)."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        present = all(hasattr(torch.ops.mkldnn, name)
                      for name in ("_convolution_pointwise", "_convolution_transpose_pointwise"))
        return present and (dtype != torch.bfloat16 or bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()))
    except (AttributeError, RuntimeError):
        return False


def _bn_scale_shift(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift), each (C,) float64, of eval-mode ``bn``: ``bn(x) = x * scale + shift``."""
    var, mean = bn.running_var.double(), bn.running_mean.double()
    gamma = bn.weight.double() if bn.weight is not None else torch.ones_like(var)
    beta = bn.bias.double() if bn.bias is not None else torch.zeros_like(var)
    scale = gamma / torch.sqrt(var + bn.eps)
    return scale, beta - mean * scale


@dataclass
class FoldedConv:
    """One convolution of the graph with its BN folded in: ``weight`` (C_out, C_in, k, k), or (C_in, C_out, k, k)
    when ``transposed`` (stride 2, output padding 1, the decoder's upsampling), ``bias`` (C_out,), both float64 until
    `InferenceGraph` stores them; ``relu``: followed by a ReLU."""

    weight: torch.Tensor
    bias: torch.Tensor
    relu: bool
    transposed: bool = False


def _fold(layers: list[nn.Module]) -> list[FoldedConv]:
    """The `FoldedConv` list of a run of layers (Conv2d/ConvTranspose2d, each optionally followed by BatchNorm2d
    and ReLU); any other layer raises TypeError (the graph covers `MGIDNet`'s layers and nothing else)."""
    folded: list[FoldedConv] = []
    for layer in layers:
        if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d)):
            transposed = isinstance(layer, nn.ConvTranspose2d)
            weight = layer.weight.detach().double()
            out_channels = weight.shape[1] if transposed else weight.shape[0]
            bias = (layer.bias.detach().double() if layer.bias is not None
                    else torch.zeros(out_channels, dtype=torch.float64, device=weight.device))
            folded.append(FoldedConv(weight, bias, relu=False, transposed=transposed))
        elif isinstance(layer, nn.BatchNorm2d) and folded and not folded[-1].relu:
            scale, shift = _bn_scale_shift(layer)
            conv = folded[-1]
            shape = (1, -1, 1, 1) if conv.transposed else (-1, 1, 1, 1)
            conv.weight = conv.weight * scale.reshape(shape)
            conv.bias = conv.bias * scale + shift
        elif isinstance(layer, nn.ReLU) and folded and not folded[-1].relu:
            folded[-1].relu = True
        elif isinstance(layer, nn.Tanh):
            continue  # the head's tanh: applied by the graph in float32
        else:
            raise TypeError(f"InferenceGraph cannot fold a {type(layer).__name__} here")
    return folded


class InferenceGraph(nn.Module):
    """``net`` (an `MGIDNet`) frozen for inference at ``precision`` (``fp32`` or ``bf16``; ``auto`` resolved on the
    net's device, `mgid.precision.resolve_precision`) in memory format ``channels_last`` (a bool).

    `rain` and `pre_norm_query` compute what ``net(image, update_memory=False).rain`` and
    ``net.pre_norm_query(image)`` compute, for any (B, 3, H, W) floating image in [-1, 1]. The network's
    upsampling mode and concatenation order are kept; its memory items are copied.

    Raises:
        ValueError: a precision other than auto, fp32 and bf16.
    """

    def __init__(self, net: MGIDNet, precision: str = "auto", channels_last: bool = True) -> None:
        super().__init__()
        device = next(net.parameters()).device
        self.precision = resolve_precision(precision, device, "inference")
        self.dtype = GRAPH_DTYPES[self.precision]
        self.config: ModelConfig = net.config
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.fused = device.type == "cpu" and fused_cpu_convolutions(self.dtype)
        self.nnpack = (device.type == "cpu" and self.precision == "fp32" and not channels_last
                       and nnpack_available())
        self.norm_eps = net.encoder.norm_eps
        self.grad_through_weights = net.memory.grad_through_weights
        self.resize_conv = net.config.upsample == "resize_conv"
        self.skip_first = net.config.concat_order == "skip_first"
        self.register_buffer("items", net.memory.items.detach().float().clone())
        enc, dec = net.encoder, net.decoder
        self._encoder = [self._store(_fold(list(sequential_layers(s)))) for s in (enc.stage1, enc.stage2, enc.stage3)]
        self._stage4 = self._store(_fold(list(sequential_layers(enc.stage4))))
        self._bottleneck = self._store(_fold(list(sequential_layers(dec.bottleneck))))
        self._ups = [self._store(_fold([m for m in sequential_layers(up) if not isinstance(m, nn.Upsample)]))
                     for up in (dec.up3, dec.up2, dec.up1)]
        self._blocks = [self._split(self._store(_fold(list(sequential_layers(b))))) for b in
                        (dec.block3, dec.block2, dec.head)]
        convs = [c for group in (*self._encoder, self._stage4, self._bottleneck, *self._ups) for c in group]
        convs += [c for up, skip, rest in self._blocks for c in (up, skip, *rest)]
        #: Whether every folded weight, bias and memory item is finite. A fused ReLU maps NaN to 0, so broken
        #: weights (a negative BN variance, say) would not show as NaN in the output: callers check this instead.
        self.finite = bool(torch.isfinite(self.items).all()) and all(
            bool(torch.isfinite(c.weight).all()) and bool(torch.isfinite(c.bias).all()) for c in convs)

    def _store(self, folded: list[FoldedConv]) -> list[FoldedConv]:
        """``folded`` with weights and biases in the compute dtype and memory format."""
        for conv in folded:
            conv.weight = conv.weight.to(self.dtype).contiguous(memory_format=self.memory_format)
            conv.bias = conv.bias.to(self.dtype)
        return folded

    def _split(self, block: list[FoldedConv]) -> tuple[FoldedConv, FoldedConv, list[FoldedConv]]:
        """(the first conv's half for the upsampled input, its half for the skip, the block's other convs)."""
        first, rest = block[0], block[1:]
        c = first.weight.shape[1] // 2
        halves = (first.weight[:, :c], first.weight[:, c:])
        w_up, w_skip = (halves[1], halves[0]) if self.skip_first else halves
        up = FoldedConv(w_up.contiguous(memory_format=self.memory_format), torch.zeros_like(first.bias), relu=False)
        skip = FoldedConv(w_skip.contiguous(memory_format=self.memory_format), first.bias, relu=first.relu)
        return up, skip, rest

    def _conv(self, x: torch.Tensor, conv: FoldedConv, add: torch.Tensor | None = None) -> torch.Tensor:
        """``relu?(conv(x) + add?)`` in the compute dtype."""
        k = conv.weight.shape[-1]
        pad = [k // 2] * 2
        if self.fused and not self.nnpack:  # oneDNN runs the sum and the ReLU as post-ops
            attr = "relu" if conv.relu else "none"
            if conv.transposed:
                return torch.ops.mkldnn._convolution_transpose_pointwise(
                    x, conv.weight, conv.bias, pad, [1, 1], [2, 2], [1, 1], 1, attr, [], "")
            if add is not None:
                return torch.ops.mkldnn._convolution_pointwise.binary(
                    x, add, conv.weight, conv.bias, pad, [1, 1], [1, 1], 1, "add", 1.0, attr, [], "")
            return torch.ops.mkldnn._convolution_pointwise(x, conv.weight, conv.bias, pad, [1, 1], [1, 1], 1, attr,
                                                           [], "")
        if self.nnpack:
            weight = conv.weight
            if conv.transposed:
                # The stride-2 transposed convolution is the 3x3 convolution, with the kernel flipped and its channel
                # dimensions swapped, of the input with zeros between its pixels (4x the multiplications, but
                # oneDNN's NCHW transposed convolution and its reorder are slower still: docs/DERAIN.md).
                b, c, h, w = x.shape
                spread = x.new_zeros(b, c, 2 * h, 2 * w)
                spread[..., ::2, ::2] = x
                x, weight = spread, weight.transpose(0, 1).flip(-1, -2)
            y = torch._nnpack_spatial_convolution(x.contiguous(), weight.contiguous(), conv.bias, pad, [1, 1])
        elif conv.transposed:
            y = F.conv_transpose2d(x, conv.weight, conv.bias, stride=2, padding=pad, output_padding=1)
        else:
            y = F.conv2d(x, conv.weight, conv.bias, padding=pad)
        if add is not None:
            y = y.add_(add)
        return y.relu_() if conv.relu else y

    def _run(self, x: torch.Tensor, convs: list[FoldedConv]) -> torch.Tensor:
        for conv in convs:
            x = self._conv(x, conv)
        return x

    def _input(self, image: torch.Tensor) -> torch.Tensor:
        """``image`` padded to multiples of 8 (as the network pads), in the compute dtype and memory format."""
        padded = pad_to_multiple(image, DOWNSAMPLE, self.config.pad_mode)
        return padded.to(self.items.device, self.dtype).contiguous(memory_format=self.memory_format)

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        """2x2 max-pool, stride 2 (H and W are even), as the maximum of row pairs and then of column pairs of a view
        of the memory: the values of ``max_pool2d``, which also writes an index per output on the CPU (measured at
        1024x1024: 3.6x slower in NCHW fp32, 1.4x in channels_last bf16, the same in channels_last fp32)."""
        b, c, h, w = x.shape
        if self.memory_format == torch.channels_last:
            rows = x.permute(0, 2, 3, 1).reshape(b, h // 2, 2, w // 2, 2 * c)  # (B, H/2, 2, W/2, 2C): a view
            pairs = torch.maximum(rows[:, :, 0], rows[:, :, 1])
            return torch.maximum(pairs[..., :c], pairs[..., c:]).permute(0, 3, 1, 2)
        rows = x.reshape(b, c, h // 2, 2 * w)
        pairs = torch.maximum(rows[..., :w], rows[..., w:]).reshape(b, c, h // 2, w // 2, 2)
        return torch.maximum(pairs[..., 0], pairs[..., 1])

    def _encode(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        skips: list[torch.Tensor] = []
        for stage in self._encoder:
            x = self._run(x, stage)
            skips.append(x)
            x = self._pool(x)
        return self._run(x, self._stage4), skips

    @torch.no_grad()
    def pre_norm_query(self, image: torch.Tensor) -> torch.Tensor:
        """The pre-norm query (B, C, H'/8, W'/8), float32, of ``image`` (B, 3, H, W) (`MGIDNet.pre_norm_query`)."""
        return self._encode(self._input(image))[0].float()

    @torch.no_grad()
    def rain(self, image: torch.Tensor, norm_stats: NormStats | tuple[torch.Tensor, torch.Tensor] | None = None
             ) -> torch.Tensor:
        """The rain layer (B, 3, H, W), float32 on the graph's device, of ``image`` (B, 3, H, W) in [-1, 1]; the
        query normalised by its own statistics, or by ``norm_stats`` (mean, var), each (B, C, 1, 1) (as
        `MGIDNet.forward`)."""
        h, w = image.shape[-2:]
        query, skips = self._encode(self._input(image))
        query = query.float()
        mean, var = (NormStats.of(query) if norm_stats is None
                     else (t.to(query.device, torch.float32) for t in norm_stats))
        query = (query - mean) / torch.sqrt(var + self.norm_eps)
        x = ops.memory_read(query, self.items, grad_through_weights=self.grad_through_weights)
        x = self._run(x.to(self.dtype).contiguous(memory_format=self.memory_format), self._bottleneck)
        for up, (w_up, w_skip, rest) in zip(self._ups, self._blocks):
            if self.resize_conv:
                x = F.interpolate(x, scale_factor=2, mode="nearest")
            x = self._run(x, up)
            x = self._conv(skips.pop(), w_skip, add=self._conv(x, w_up))
            x = self._run(x, rest)
        rain = torch.tanh(x.float())
        if self.config.double_tanh:
            rain = rain.tanh_()
        return rain[..., :h, :w]
