"""The two graphs `mgid.derain.onnx_export` writes, each with what its export and verification need (`GraphSpec`).

`IMAGE_FILTER` (the default): ``image`` (N, 3, H, W) float32 in [0, 1], H, W >= 8 -> ``derained`` in [0, 1], the
padding inside the graph. `TILING` (``mgid export --tiling-inputs``): ``image`` (B, 3, H, W) in [-1, 1], H and W
multiples of 8, with the whole image's instance-norm statistics -> ``rain`` and ``pre_norm_query``. Their full
contracts: docs/DEPLOY.md, "Design notes".
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mgid import ops as mgid_ops
from mgid.models import DOWNSAMPLE, MGIDNet

#: Side of the example input the export traces with (batch 2 so the batch is not specialised).
EXAMPLE_SIZE = 64


class TilingGraph(nn.Module):
    """`MGIDNet` in eval mode, memory read only, returning tensors: ``forward(image (B, 3, H, W) in [-1, 1],
    norm_mean (B, C, 1, 1), norm_var (B, C, 1, 1), use_norm_stats (1,) bool)`` -> ``(rain (B, 3, H, W),
    pre_norm_query (B, C, H/8, W/8))``; H and W multiples of 8. Only the network's public API is used
    (`MGIDNet.pre_norm_query`, ``forward(norm_stats=...)``)."""

    def __init__(self, net: MGIDNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, image: torch.Tensor, norm_mean: torch.Tensor, norm_var: torch.Tensor,
                use_norm_stats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        query = self.net.pre_norm_query(image)
        # The query's own statistics, as InstanceNorm2d takes them (biased variance); a select rather than
        # an If node keeps one straight graph, and the reductions cost little next to the convolutions.
        own_mean = query.mean(dim=(2, 3), keepdim=True)
        own_var = query.var(dim=(2, 3), unbiased=False, keepdim=True)
        mean = torch.where(use_norm_stats, norm_mean, own_mean)
        var = torch.where(use_norm_stats, norm_var, own_var)
        out = self.net(image, update_memory=False, memory_losses=False, norm_stats=(mean, var))
        return out.rain, query


class ImageFilterGraph(nn.Module):
    """`MGIDNet` as an image filter: ``forward(image (N, 3, H, W) in [0, 1])`` -> the de-rained image (N, 3, H, W)
    in [0, 1] (see the module doc); the padding to multiples of 8 is computed from the input's shape."""

    def __init__(self, net: MGIDNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = image * 2 - 1
        h, w = x.shape[-2], x.shape[-1]
        # (-h) % 8 rows at the bottom, reflected: pad_to_multiple's choice for every side >= 8
        padded = F.pad(x, (0, (DOWNSAMPLE - w % DOWNSAMPLE) % DOWNSAMPLE, 0, (DOWNSAMPLE - h % DOWNSAMPLE) % DOWNSAMPLE),
                       mode="reflect")
        rain = self.net.padded_rain(padded)[..., :h, :w]
        return ((x - rain + 1) * 0.5).clamp(0, 1)


@dataclass(frozen=True)
class GraphSpec:
    """One kind of exported graph: its module, input and output names, example inputs, dynamic axes for both
    exporters, a verification (onnxruntime vs PyTorch at a second size) and the metadata describing it."""

    kind: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    graph_format: str
    build: Callable[[MGIDNet], nn.Module]
    example: Callable[[MGIDNet], tuple[torch.Tensor, ...]]
    dynamic_shapes: Callable[[], dict[str, Any]]
    torchscript_axes: dict[str, dict[int, str]]
    check: Callable[[MGIDNet, tuple[torch.Tensor, ...]], tuple[dict[str, np.ndarray], torch.Tensor]]
    doc: str
    metadata: dict[str, str] = field(default_factory=dict)


def _tiling_example(net: MGIDNet) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    c = net.config.channels
    image = torch.rand(2, net.config.image_channels, EXAMPLE_SIZE, EXAMPLE_SIZE, generator=g) * 2 - 1
    return image, torch.zeros(2, c, 1, 1), torch.ones(2, c, 1, 1), torch.tensor([False])


def _tiling_shapes() -> dict[str, Any]:
    from torch.export import Dim

    batch = Dim("batch")
    # H = 8 * h8: the model's pad-to-a-multiple-of-8 is then provably a no-op and leaves no size branch.
    h8, w8 = Dim("height_div8"), Dim("width_div8")
    return {"image": {0: batch, 2: DOWNSAMPLE * h8, 3: DOWNSAMPLE * w8}, "norm_mean": {0: batch},
            "norm_var": {0: batch}, "use_norm_stats": None}


def _tiling_check(net: MGIDNet, example: tuple[torch.Tensor, ...]) -> tuple[dict[str, np.ndarray], torch.Tensor]:
    # Another size and batch than the traced one: a size baked in by the trace would show here.
    image = example[0][:1, :, : EXAMPLE_SIZE - 16, : EXAMPLE_SIZE - 8].contiguous()
    c = net.config.channels
    feeds = {"image": image.numpy(), "norm_mean": np.zeros((1, c, 1, 1), np.float32),
             "norm_var": np.ones((1, c, 1, 1), np.float32), "use_norm_stats": np.array([False])}
    with torch.no_grad(), mgid_ops.use_reference():
        return feeds, net(image, update_memory=False, memory_losses=False).rain


def _filter_example(net: MGIDNet) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    # sides that are not multiples of 8: the in-graph padding is traced as a function of the size
    return (torch.rand(2, net.config.image_channels, EXAMPLE_SIZE - 3, EXAMPLE_SIZE - 19, generator=g),)


def _filter_shapes() -> dict[str, Any]:
    from torch.export import Dim

    return {"image": {0: Dim("batch"), 2: Dim("height", min=DOWNSAMPLE), 3: Dim("width", min=DOWNSAMPLE)}}


def _filter_check(net: MGIDNet, example: tuple[torch.Tensor, ...]) -> tuple[dict[str, np.ndarray], torch.Tensor]:
    image = example[0][:1, :, : EXAMPLE_SIZE - 27, : EXAMPLE_SIZE - 14].contiguous()  # 37 x 50: padded 40 x 56
    x = image * 2 - 1
    with torch.no_grad(), mgid_ops.use_reference():
        rain = net(x, update_memory=False, memory_losses=False).rain  # the network's own padding and crop
    return {"image": image.numpy()}, ((x - rain + 1) * 0.5).clamp(0, 1)


TILING = GraphSpec(
    kind="tiling", inputs=("image", "norm_mean", "norm_var", "use_norm_stats"), outputs=("rain", "pre_norm_query"),
    graph_format="1", build=TilingGraph, example=_tiling_example, dynamic_shapes=_tiling_shapes,
    torchscript_axes={"image": {0: "batch", 2: "height", 3: "width"}, "norm_mean": {0: "batch"},
                      "norm_var": {0: "batch"}, "rain": {0: "batch", 2: "height", 3: "width"},
                      "pre_norm_query": {0: "batch", 2: "height_div8", 3: "width_div8"}},
    check=_tiling_check,
    doc=("MGID de-raining network (memory read only), the graph mgid derain --backend onnxruntime tiles with. "
         "Inputs: image (B,3,H,W) float32 in [-1,1], H and W multiples of 8 (pad first); norm_mean, norm_var "
         "(B,C,1,1) and use_norm_stats (1,) bool (false: the image's own instance-norm statistics). Outputs: rain "
         "(B,3,H,W), the rain layer R (de-rained = image - rain); pre_norm_query (B,C,H/8,W/8)."),
    metadata={"mgid.output": "rain", "mgid.input_range": "[-1, 1]", "mgid.input_multiple": str(DOWNSAMPLE)})

IMAGE_FILTER = GraphSpec(
    kind="image_filter", inputs=("image",), outputs=("derained",), graph_format="filter-1",
    build=ImageFilterGraph, example=_filter_example, dynamic_shapes=_filter_shapes,
    torchscript_axes={"image": {0: "batch", 2: "height", 3: "width"},
                      "derained": {0: "batch", 2: "height", 3: "width"}},
    check=_filter_check,
    doc=("MGID de-raining as an image filter. Input: image (N,3,H,W) float32 RGB in [0,1] (8-bit pixels / 255), "
         "any N, any H and W >= 8 (H*W >= 128 after padding to multiples of 8). Output: derained (N,3,H,W) "
         "float32 in [0,1] (x 255 and round for 8-bit pixels). The padding to multiples of 8 (reflect, bottom "
         "and right) and the crop back are inside the graph."),
    metadata={"mgid.output": "derained", "mgid.input_range": "[0, 1]", "mgid.output_range": "[0, 1]",
              "mgid.input_min_side": str(DOWNSAMPLE), "mgid.input_multiple": "1"})
