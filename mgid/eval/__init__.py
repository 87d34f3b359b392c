"""Scoring de-rained images the way papers do.

* `mgid.eval.metrics` -- PSNR and SSIM (RGB or the Y channel of YCbCr), brightness shift;
* `mgid.eval.scoring` -- a de-raining function scored over a paired folder (``mgid evaluate --data``);
* `mgid.eval.heldout` -- the embedded held-out sets against the input and two baselines (``mgid heldout``).
"""
