"""Weights of the public MGID code (github.com/jhcho90/MGID) as a state dict of `MGIDNet`.

`convert_official_state_dict` renames a public checkpoint's state dict (``model_XXXXX.pth``: ``{"model":
state_dict, "memory_items": (M, C), ...}``) module by module (`OFFICIAL_MODULES`). The result is for a network
built with ``ModelConfig(concat_order="skip_first")``; ``bgr_to_rgb=True`` makes it take and return RGB. The
name mapping: docs/ALGORITHM.md, "Design notes".
"""
from __future__ import annotations

from collections.abc import Mapping

import torch

from mgid.errors import InputError

#: MNAD's ``Basic`` block (conv-BN-ReLU twice): its parameter-holding indices -> ours (two ``conv_bn_relu``).
_BASIC = {"0": "0.0", "1": "0.1", "3": "1.0", "4": "1.1"}
#: MNAD's ``Basic_`` (encoder stage 4: conv-BN-ReLU, conv).
_BASIC_ = {"0": "0.0", "1": "0.1", "3": "1"}
#: MNAD's ``Gen`` (the head: conv-BN-ReLU twice, conv, tanh).
_GEN = {"0": "0.0", "1": "0.1", "3": "1.0", "4": "1.1", "6": "2"}
#: MNAD's ``Upsample`` (ConvTranspose2d, BN, ReLU): the same indices as ours.
_UPSAMPLE = {"0": "0", "1": "1"}

#: Official module name -> (our module name, official layer index -> ours).
OFFICIAL_MODULES: Mapping[str, tuple[str, Mapping[str, str]]] = {
    "encoder.moduleConv1": ("encoder.stage1", _BASIC),
    "encoder.moduleConv2": ("encoder.stage2", _BASIC),
    "encoder.moduleConv3": ("encoder.stage3", _BASIC),
    "encoder.moduleConv4": ("encoder.stage4", _BASIC_),
    "decoder.moduleConv": ("decoder.bottleneck", _BASIC),
    "decoder.moduleUpsample4": ("decoder.up3", _UPSAMPLE),
    "decoder.moduleDeconv3": ("decoder.block3", _BASIC),
    "decoder.moduleUpsample3": ("decoder.up2", _UPSAMPLE),
    "decoder.moduleDeconv2": ("decoder.block2", _BASIC),
    "decoder.moduleUpsample2": ("decoder.up1", _UPSAMPLE),
    "decoder.moduleDeconv1": ("decoder.head", _GEN),
}
#: Official modules that `MGIDNet` does not have: declared by the public code but never called.
OFFICIAL_UNUSED = ("encoder.moduleBatchNorm",)
#: Our names of the first convolution (input channels = image channels) and of the output convolution.
_FIRST_CONV = "encoder.stage1.0.0"
_OUTPUT_CONV = "decoder.head.2"
_MEMORY_ITEMS = "memory.items"


def _our_name(key: str) -> str | None:
    """Our name of official state-dict entry ``key``; None for an unused module's; ValueError if unknown."""
    module, _, rest = key.rpartition(".")  # rest: weight, bias, running_mean, ...
    parent, _, index = module.rpartition(".")
    if parent in OFFICIAL_MODULES and index in OFFICIAL_MODULES[parent][1]:
        ours, indices = OFFICIAL_MODULES[parent]
        return f"{ours}.{indices[index]}.{rest}"
    if any(key.startswith(f"{name}.") for name in OFFICIAL_UNUSED):
        return None
    raise InputError(f"{key!r} is not a parameter of the public MGID network (convAE); expected entries of "
                     f"{', '.join(OFFICIAL_MODULES)} (pass the checkpoint's 'model' state dict)")


def convert_official_state_dict(state_dict: Mapping[str, torch.Tensor], memory_items: torch.Tensor | None = None,
                                *, bgr_to_rgb: bool = False) -> dict[str, torch.Tensor]:
    """The public MGID code's network weights ``state_dict`` (its checkpoint's ``"model"``) under `MGIDNet`'s names.

    Args:
        state_dict: official names (``encoder.moduleConv1.0.weight``, ...) -> tensors; every entry must belong to
            `OFFICIAL_MODULES` or `OFFICIAL_UNUSED` (dropped).
        memory_items: the checkpoint's ``"memory_items"`` (M, C); added as ``memory.items`` so the result loads
            with ``strict=True`` into ``MGIDNet(ModelConfig(concat_order="skip_first", memory_items=M))``. Without
            it the result has no items: load it with ``strict=False`` (the network keeps its own items).
        bgr_to_rgb: reverse the colour channels of the first and the output convolution, for RGB input (this
            package's images) to a network trained on BGR (the public code's).

    Entries missing from ``state_dict`` are not detected here (but for those ``bgr_to_rgb`` reorders):
    ``load_state_dict(strict=True)`` reports them with our names.

    Returns:
        A new dict under `MGIDNet`'s names (tensors shared with ``state_dict`` unless reordered).

    Raises:
        InputError: an entry of no known module, naming it; an entry ``bgr_to_rgb`` needs is missing; or
            ``memory_items`` is not (M, C) (a ``ValueError``).
    """
    converted: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        name = _our_name(key)
        if name is not None:
            converted[name] = value
    if bgr_to_rgb:
        colour_axes = {f"{_FIRST_CONV}.weight": 1, f"{_OUTPUT_CONV}.weight": 0, f"{_OUTPUT_CONV}.bias": 0}
        missing = [name for name in colour_axes if name not in converted]
        if missing:
            raise InputError(f"bgr_to_rgb needs the first and the output convolution, missing {missing}")
        for name, axis in colour_axes.items():  # weights (out, in, k, k): the first conv's inputs are the colours
            converted[name] = converted[name].flip(axis)
    if memory_items is not None:
        if memory_items.dim() != 2:
            raise InputError(f"memory_items must have shape (M, C), got {tuple(memory_items.shape)}")
        converted[_MEMORY_ITEMS] = memory_items
    return converted
