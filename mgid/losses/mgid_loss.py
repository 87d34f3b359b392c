"""The MGID training objective for a pair of frames of one static scene with different rain.

  |B1 - B2| + |B1 - I2| + |I1 - B2| + |(B2 + R1) - I1| + |(B1 + R2) - I2|     (L1 means)
  + w_c L_compact + w_s L_separate + w_bsw L_BSW(q1, q2) - w_ssim SSIM(B1, B2)

with SSIM's constants and borders set by ``LossWeights.ssim_data_range`` and ``ssim_border``.

The backgrounds of the two frames must agree, and each frame's rain added to the other frame's
background must give that frame back; the memory and whitening terms shape the queries.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import nn

from mgid import ops
from mgid.config.literals import check_literals
from mgid.errors import InputError
from mgid.losses.ssim import DATA_RANGE, SSIMBorder, SSIMConfig, ssim
from mgid.models.mgid import MGIDOutput

CompactnessMode = Literal["mean", "last"]
COMPACTNESS_MODES = get_args(CompactnessMode)
L1_TERMS = ("l1_bg", "l1_bg1_i2", "l1_i1_bg2", "l1_recon1", "l1_recon2")


@dataclass
class LossWeights:
    """Weights of the MGID objective (defaults: the public training code) and its options.

    Attributes:
        l1_bg: |B1 - B2|.
        l1_bg1_i2: |B1 - I2|.
        l1_i1_bg2: |I1 - B2|.
        l1_recon1: |(B2 + R1) - I1|, frame 1 rebuilt from frame 2's background.
        l1_recon2: |(B1 + R2) - I2|, frame 2 rebuilt from frame 1's background.
        compactness: MNAD compactness loss (0.01).
        separateness: MNAD separateness loss (computed by the public code, unused: 0).
        bsw: background selective whitening loss (0.01).
        ssim: SSIM(B1, B2), subtracted (0.5).
        bsw_k: clusters of the 1-D k-means of the BSW mask (50).
        compactness_mode: how the two frames' memory losses combine: "mean" (average) or "last"
            (frame 2's only, as the public code, which overwrites frame 1's value). Applies to
            separateness too.
        ssim_data_range: data range L of the images for SSIM's constants C1 = (0.01 L)^2, C2 = (0.03 L)^2:
            2.0, the span of the [-1, 1] images (default), or 1.0, the public code's constants on them
            (C1 = 0.01^2, C2 = 0.03^2; the paper recipe).
        ssim_border: SSIM's borders (`mgid.losses.ssim`): "valid" (the map where the 11x11 window lies inside
            the image, as scikit-image; default) or "same" (zero-padded, the full map, as the public code; the
            paper recipe).
    """

    l1_bg: float = 1.0
    l1_bg1_i2: float = 1.0
    l1_i1_bg2: float = 1.0
    l1_recon1: float = 1.0
    l1_recon2: float = 1.0
    compactness: float = 0.01
    separateness: float = 0.0
    bsw: float = 0.01
    ssim: float = 0.5
    bsw_k: int = 50
    compactness_mode: CompactnessMode = "mean"
    ssim_data_range: float = DATA_RANGE
    ssim_border: SSIMBorder = "valid"

    def __post_init__(self) -> None:
        check_literals(self)  # compactness_mode, ssim_border: from their Literal types
        if isinstance(self.bsw_k, bool) or not isinstance(self.bsw_k, int) or self.bsw_k < 1:
            raise InputError(f"bsw_k must be a positive int, got {self.bsw_k!r}")

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


class MGIDLoss(nn.Module):
    """MGID objective of two frames: ``total, terms = MGIDLoss()(out1, out2, image1, image2)``.

    A term whose weight is 0 is still reported (computed without gradient where it is not already part of the
    graph) but does not enter the total.

    Args:
        weights: the term weights and options (default ``LossWeights()``, the public training code's).
    """

    def __init__(self, weights: LossWeights | None = None) -> None:
        super().__init__()
        self.weights = weights if weights is not None else LossWeights()
        self.ssim_config = SSIMConfig(data_range=self.weights.ssim_data_range, border=self.weights.ssim_border)

    def extra_repr(self) -> str:
        return str(self.weights)

    def _combine(self, first: torch.Tensor | None, second: torch.Tensor | None) -> torch.Tensor | None:
        """The two frames' memory loss as ``compactness_mode`` says; None where one needed is missing."""
        if self.weights.compactness_mode == "last":
            return second
        return None if first is None or second is None else (first + second) / 2

    def forward(
        self, out1: MGIDOutput, out2: MGIDOutput, image1: torch.Tensor, image2: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The objective of two frames of one scene.

        Args:
            out1: the `mgid.models.MGIDOutput` of ``image1``.
            out2: the `mgid.models.MGIDOutput` of ``image2``, run after ``out1``.
            image1: frame 1, (B, 3, H, W) in [-1, 1].
            image2: frame 2, (B, 3, H, W), the same shape.

        Returns:
            ``(total, terms)``: the 0-dim total (differentiable) and a dict of detached 0-dim tensors (no host
            sync; call ``.item()`` to log): the unweighted terms ``l1_bg, l1_bg1_i2, l1_i1_bg2, l1_recon1,
            l1_recon2, compactness, separateness, bsw, ssim`` and ``total``.

        Raises:
            InputError: the outputs and images differ in shape, or a weighted memory loss is missing (run the
                model in train mode or with ``memory_losses=True``) (a ``ValueError``).
        """
        w = self.weights
        b1, b2, r1, r2 = out1.background, out2.background, out1.rain, out2.rain
        if not (b1.shape == b2.shape == image1.shape == image2.shape):
            raise InputError(f"both frames' outputs and images must share one shape (B, 3, H, W), got "
                             f"{tuple(b1.shape)}, {tuple(b2.shape)}, {tuple(image1.shape)}, {tuple(image2.shape)}")
        # Note (B2 + R1) - I1 = B2 - B1 and (B1 + R2) - I2 = B1 - B2 since B = I - R: the two
        # reconstruction terms equal l1_bg in value. Kept as separate, separately weighted terms
        # because that is the published objective.
        terms: dict[str, torch.Tensor] = {
            "l1_bg": F.l1_loss(b1, b2),
            "l1_bg1_i2": F.l1_loss(b1, image2),
            "l1_i1_bg2": F.l1_loss(image1, b2),
            "l1_recon1": F.l1_loss(b2 + r1, image1),
            "l1_recon2": F.l1_loss(b1 + r2, image2),
        }
        weighted = {name: getattr(w, name) for name in L1_TERMS}

        # Memory terms come from the model (None in eval mode unless asked for): a missing one is
        # an error when weighted, and is reported as NaN otherwise.
        for name, first, second in (("compactness", out1.compactness, out2.compactness),
                                    ("separateness", out1.separateness, out2.separateness)):
            value = self._combine(first, second)
            weight = getattr(w, name)
            if value is None:
                if weight != 0:
                    raise InputError(f"MGIDLoss needs the {name} loss of both frames; run the model in "
                                     f"train mode or with memory_losses=True")
                value = b1.new_tensor(float("nan"))
            terms[name] = value
            weighted[name] = weight

        with torch.set_grad_enabled(torch.is_grad_enabled() and w.bsw != 0):
            terms["bsw"] = ops.bsw_loss(out1.query, out2.query, k=w.bsw_k)
        weighted["bsw"] = w.bsw
        with torch.set_grad_enabled(torch.is_grad_enabled() and w.ssim != 0):
            terms["ssim"] = ssim(b1, b2, self.ssim_config)
        weighted["ssim"] = -w.ssim  # SSIM is maximised

        total = b1.new_zeros(())
        for name, weight in weighted.items():
            if weight != 0:  # skip rather than multiply, so a NaN in an unused term stays out
                total = total + weight * terms[name]
        logged = {name: value.detach() for name, value in terms.items()}
        logged["total"] = total.detach()
        return total, logged
