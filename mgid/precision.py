"""Which arithmetic runs: precision and memory format, ``auto`` resolved from the machine, and why.

One place for training, inference and the benchmarks: `resolve_arithmetic` (and `resolve_precision`,
`resolve_channels_last`) turn ``auto`` into bf16 autocast + channels_last on a CPU with native bf16 dot products
and fp32 elsewhere, GPUs included, with the reason in `Arithmetic`; `autocast` enters the chosen precision;
`CpuInfo` / `cpu_info` name the CPU in every benchmark record. Imports only torch. The measurements behind
``auto``: docs/TRAIN.md and docs/KERNELS.md.
"""
from __future__ import annotations

import contextlib
import functools
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

import torch

from mgid.errors import InputError

#: A memory-format setting: ``auto`` (channels_last exactly when bf16 runs on a CPU), ``on`` or ``off``.
ChannelsLast = Literal["auto", "on", "off"]
#: ``ChannelsLast`` -> the ``channels_last`` argument of the resolvers (None = auto).
CHANNELS_LAST_SETTINGS: dict[str, bool | None] = {"auto": None, "on": True, "off": False}
#: What the arithmetic is for: the best memory format differs (`resolve_channels_last`).
Purpose = Literal["training", "inference"]
#: A training precision setting (`mgid.config.train_config.TrainConfig.precision`): fp16 is autocast + gradient
#: scaling (for GPUs); ``auto`` resolves by the machine (`resolve_precision`).
TrainingPrecision = Literal["auto", "fp32", "bf16", "fp16"]
#: The precisions each purpose takes: inference has no fp16 (fp32 or bf16 autocast).
PRECISIONS: dict[str, tuple[str, ...]] = {"training": get_args(TrainingPrecision),
                                          "inference": ("auto", "fp32", "bf16")}
#: The autocast dtype of each reduced precision.
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
#: /proc/cpuinfo flags that decide the arithmetic, in the order they are reported.
REPORTED_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")
#: oneDNN ISA caps (DNNL_MAX_CPU_ISA) that still include native bf16 dot products.
_DNNL_BF16_ISAS = ("AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX10_1_512", "AVX10_1_512_AMX",
                   "AVX10_1_512_AMX_FP16", "AVX512_CORE_AMX", "AVX512_CORE_AMX_FP16", "ALL")


@dataclass(frozen=True)
class CpuInfo:
    """This CPU as the arithmetic choice sees it.

    Attributes:
        model: the model name (/proc/cpuinfo ``model name``, else `platform.processor`).
        flags: those of `REPORTED_FLAGS` the CPU has.
        aten_capability: torch's vector capability (``torch.backends.cpu.get_cpu_capability()``:
            AVX512, AVX2, DEFAULT, ...; lowered by ``ATEN_CPU_CAPABILITY``).
        dnnl_max_isa: ``DNNL_MAX_CPU_ISA`` / ``ONEDNN_MAX_CPU_ISA`` when set, else None.
    """

    model: str
    flags: tuple[str, ...]
    aten_capability: str
    dnnl_max_isa: str | None

    @property
    def has_bf16_instructions(self) -> bool:
        return "avx512_bf16" in self.flags or "amx_bf16" in self.flags

    @property
    def capped_below_bf16(self) -> str | None:
        """Why torch cannot use the bf16 instructions although the CPU has them (an env cap), else None."""
        if self.aten_capability.upper() not in ("AVX512", "AVX512_BF16", "AMX"):
            return f"ATen capability {self.aten_capability}"
        if self.dnnl_max_isa is not None and self.dnnl_max_isa.upper() not in _DNNL_BF16_ISAS:
            return f"DNNL_MAX_CPU_ISA={self.dnnl_max_isa}"
        return None

    @property
    def avx512_usable(self) -> bool:
        """Whether torch's fp32 kernels may use AVX512 here: the CPU has it and neither ATEN_CPU_CAPABILITY nor
        DNNL_MAX_CPU_ISA caps it (to AVX2 or below)."""
        if "avx512f" not in self.flags or not self.aten_capability.upper().startswith(("AVX512", "AMX")):
            return False
        return self.dnnl_max_isa is None or not self.dnnl_max_isa.upper().startswith(("AVX2", "AVX_", "SSE"))

    @property
    def native_bf16(self) -> bool:
        return self.has_bf16_instructions and self.capped_below_bf16 is None

    def describe(self) -> str:
        """``"AMD EPYC 9B14 (avx2 avx512f avx512_bf16; ATen AVX512)"``: the model, its flags, torch's caps."""
        caps = f"ATen {self.aten_capability}" + (f", DNNL_MAX_CPU_ISA={self.dnnl_max_isa}" if self.dnnl_max_isa else "")
        return f"{self.model} ({' '.join(self.flags) or 'none of ' + '/'.join(REPORTED_FLAGS)}; {caps})"

    def to_dict(self) -> dict[str, object]:
        """JSON-ready record (benchmark reports)."""
        return {"model": self.model, "flags": list(self.flags), "aten_capability": self.aten_capability,
                "dnnl_max_isa": self.dnnl_max_isa, "native_bf16": self.native_bf16, "cores": os.cpu_count()}


def _read_cpuinfo() -> tuple[str, set[str]]:
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return platform.processor() or platform.machine() or "unknown CPU", set()
    model, flags = "", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not model:
            model = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = set(value.split())
    return model or platform.processor() or platform.machine() or "unknown CPU", flags


@functools.cache
def cpu_info() -> CpuInfo:
    """Read this machine's `CpuInfo` (once per process; later calls return the cached one).

    Returns:
        The CPU's model name, those of `REPORTED_FLAGS` it has, torch's vector capability and the oneDNN ISA cap
        (``DNNL_MAX_CPU_ISA`` or ``ONEDNN_MAX_CPU_ISA``, else None).
    """
    model, flags = _read_cpuinfo()
    dnnl = os.environ.get("DNNL_MAX_CPU_ISA") or os.environ.get("ONEDNN_MAX_CPU_ISA") or None
    return CpuInfo(model=model, flags=tuple(f for f in REPORTED_FLAGS if f in flags),
                   aten_capability=torch.backends.cpu.get_cpu_capability(), dnnl_max_isa=dnnl)


def cpu_has_native_bf16() -> bool:
    """Say whether torch can run bf16 dot products natively on this CPU.

    Returns:
        `CpuInfo.native_bf16` of `cpu_info`: the CPU has AVX512-BF16 or AMX-BF16 and no environment cap
        (`CpuInfo.capped_below_bf16`) keeps torch from them.
    """
    return cpu_info().native_bf16


def resolve_precision(precision: str, device: str | torch.device, purpose: Purpose = "training") -> str:
    """Resolve a precision setting: ``"auto"`` becomes ``"bf16"`` or ``"fp32"``, the others stay as given.

    Args:
        precision: ``"auto"``, ``"fp32"``, ``"bf16"`` or (training only) ``"fp16"``.
        device: where the network runs (a string such as ``"cpu"`` or a `torch.device`).
        purpose: ``"training"`` (the default) or ``"inference"``; it decides which precisions are taken
            (`PRECISIONS`).

    Returns:
        ``"bf16"`` for ``"auto"`` on a CPU with native bf16 (`cpu_has_native_bf16`), ``"fp32"`` for ``"auto"``
        elsewhere (GPUs included), else ``precision`` unchanged.

    Raises:
        InputError: ``precision`` is not one ``purpose`` takes (inference has no ``"fp16"``).
    """
    if precision not in PRECISIONS[purpose]:
        raise InputError(f"precision must be one of {', '.join(PRECISIONS[purpose])}, got {precision!r}")
    if precision != "auto":
        return precision
    return "bf16" if torch.device(device).type == "cpu" and cpu_has_native_bf16() else "fp32"


def resolve_channels_last(channels_last: bool | None, precision: str, device: str | torch.device,
                          purpose: Purpose = "training") -> bool:
    """Resolve a memory-format setting: whether the network and its inputs are channels_last.

    Unset (None, auto) gives channels_last on a CPU for inference, and on a CPU for training in bf16; never on a GPU.
    Inference in fp32 on a CPU where torch cannot use AVX512 (`CpuInfo.avx512_usable`) is the exception: it runs
    NCHW (NNPACK's Winograd convolutions, `mgid.models.inference_graph`) when `nnpack_available`. Why: docs/TRAIN.md,
    "Design notes".

    Args:
        channels_last: True or False to force it; None for auto.
        precision: the precision setting (``"auto"`` is resolved first by `resolve_precision`).
        device: where the network runs (a string such as ``"cpu"`` or a `torch.device`).
        purpose: ``"training"`` (the default) or ``"inference"``.

    Returns:
        Whether to use channels_last.

    Raises:
        InputError: (only when ``channels_last`` is None on a CPU) ``precision`` is not one ``purpose`` takes.
    """
    if channels_last is not None:
        return bool(channels_last)
    if torch.device(device).type != "cpu":
        return False
    resolved = resolve_precision(precision, device, purpose)
    if purpose == "inference":
        return resolved != "fp32" or cpu_info().avx512_usable or not nnpack_available()
    return resolved == "bf16"


@functools.cache
def nnpack_available() -> bool:
    """Say whether torch's NNPACK runs here (asking initialises it, which its convolution needs first).

    Returns:
        True when NNPACK is available and torch has its spatial convolution; False otherwise, also when asking
        raises (cached per process).
    """
    try:
        return bool(torch.backends.nnpack.is_available()) and hasattr(torch, "_nnpack_spatial_convolution")
    except (AttributeError, RuntimeError):
        return False


def autocast(device: str | torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Enter the chosen precision: ``torch.autocast`` for ``"bf16"`` or ``"fp16"``, nothing for ``"fp32"``.

    Args:
        device: where the network runs (its type picks the autocast device type).
        precision: a resolved precision: ``"fp32"``, ``"bf16"`` or ``"fp16"`` (not ``"auto"``).

    Returns:
        A context manager: `torch.autocast` with `AUTOCAST_DTYPES` ``[precision]``, or `contextlib.nullcontext`
        for ``"fp32"``.

    Raises:
        InputError: ``precision`` is none of the three (e.g. ``"auto"`` not resolved yet).
    """
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision not in AUTOCAST_DTYPES:
        raise InputError(f"precision must be fp32, bf16 or fp16 here (resolve auto first), got {precision!r}")
    return torch.autocast(device_type=torch.device(device).type, dtype=AUTOCAST_DTYPES[precision])


@dataclass(frozen=True)
class Arithmetic:
    """A resolved choice of arithmetic and the reason for it, for logs, messages and checkpoint records.

    Attributes:
        precision: ``fp32``, ``bf16`` (training: autocast; inference: the frozen graph's weights and activations,
            `mgid.models.inference_graph`) or ``fp16`` (training: autocast + gradient scaling).
        channels_last: whether the network and its inputs are channels_last.
        reason: why: what ``auto`` saw (the CPU and its flags), or that a setting forced it.
        purpose: ``training`` or ``inference`` (what the arithmetic is for; it names bf16 differently).
    """

    precision: str
    channels_last: bool
    reason: str
    purpose: Purpose = "training"

    def describe(self) -> str:
        """Describe the choice in one line, with its reason.

        Returns:
            ``"bf16 autocast + channels_last (auto: ...)"`` (training) or ``"bf16 + channels_last (auto: ...)"``
            (inference, where bf16 is the frozen graph's storage, not autocast).
        """
        name = self.precision
        if self.purpose == "training":
            name = {"bf16": "bf16 autocast", "fp16": "fp16 autocast"}.get(self.precision, self.precision)
        return f"{name}{' + channels_last' if self.channels_last else ''} ({self.reason})"


def _auto_precision_reason(device: torch.device) -> str:
    """Why ``auto`` precision resolved as it did on ``device``: the CPU, its flags and torch's caps."""
    if device.type != "cpu":
        return f"on {device.type}: fp32, bf16 not measured on GPUs"
    info = cpu_info()
    if cpu_has_native_bf16():
        return f"CPU {info.describe()} has native bf16"
    if info.has_bf16_instructions:
        return f"CPU {info.describe()}: its bf16 instructions are capped by {info.capped_below_bf16}"
    return f"CPU {info.describe()} has no native bf16, so bf16 would be emulated"


def resolve_arithmetic(precision: str, channels_last: bool | None, device: str | torch.device,
                       purpose: Purpose = "training") -> Arithmetic:
    """Resolve precision and memory format for ``device`` and ``purpose``, with the reason.

    Args:
        precision: ``"auto"``, ``"fp32"``, ``"bf16"`` or (training only) ``"fp16"`` (`resolve_precision`).
        channels_last: True or False to force it; None for auto (`resolve_channels_last`;
            `CHANNELS_LAST_SETTINGS` maps the ``auto``/``on``/``off`` settings to these).
        device: where the network runs (a string such as ``"cpu"`` or a `torch.device`).
        purpose: ``"training"`` (the default) or ``"inference"``.

    Returns:
        The `Arithmetic`: the resolved precision, whether channels_last, the reason (what ``auto`` saw, or which
        settings were explicit; on a CPU without native bf16 a warning that bf16 runs slowly) and ``purpose``.

    Raises:
        InputError: ``precision`` is not one ``purpose`` takes.
        RuntimeError: ``device`` is not a device torch knows (from `torch.device`).
    """
    device = torch.device(device)
    resolved = resolve_precision(precision, device, purpose)
    cl = resolve_channels_last(channels_last, resolved, device, purpose)
    if precision == "auto":
        parts = [f"auto precision{' and memory format' if channels_last is None else ''} for {purpose}: "
                 f"{_auto_precision_reason(device)}"]
    else:
        parts = ["precision set explicitly"]
        if channels_last is None:
            parts.append(f"auto memory format: channels_last {'on' if cl else 'off'} for {purpose} in {resolved} "
                         f"on {device.type}")
    if channels_last is None and purpose == "inference" and resolved == "fp32" and not cl and device.type == "cpu":
        parts.append("NCHW: NNPACK's Winograd convolutions, faster than channels_last without AVX512")
    if channels_last is not None:
        parts.append("memory format set explicitly")
    if precision != "auto" and device.type == "cpu":
        parts.append(f"CPU {cpu_info().describe()}")
        if resolved == "bf16" and not cpu_has_native_bf16():
            parts.append("warning: without native bf16 instructions bf16 runs about 10x slower than fp32")
    return Arithmetic(resolved, cl, "; ".join(parts), purpose)
