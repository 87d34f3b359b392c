"""How much memory de-raining may use, and telling an out-of-memory failure from other errors.

* `is_out_of_memory`: whether an exception is an allocation failure (torch's CUDA ``OutOfMemoryError``, the CPU
  allocator's ``RuntimeError``, NumPy's ``MemoryError``, OpenCV's "Insufficient memory"), so a loop over files can
  skip the one image that did not fit and go on.
"""
from __future__ import annotations

import torch

#: Fragments of the messages of allocation failures that arrive as a plain RuntimeError (the CPU allocator of
#: torch: "DefaultCPUAllocator: can't allocate memory"; CUDA before OutOfMemoryError existed) or a cv2.error.
_OOM_MESSAGES = ("DefaultCPUAllocator", "can't allocate memory", "out of memory", "not enough memory",
                 "Insufficient memory", "Failed to allocate")


def is_out_of_memory(exc: BaseException) -> bool:
    """True when ``exc`` says an allocation failed (the image needs more memory than there is)."""
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(exc, Exception) and any(m in str(exc) for m in _OOM_MESSAGES)
