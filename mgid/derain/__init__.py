"""Using trained weights: de-raining photos and videos, export and the web page.

* `mgid.derain.derainer` -- `load_model` and the derainers: `BaseDerainer`, its PyTorch `Derainer` (the Python API:
  weights, device, arithmetic, tiling);
* `mgid.derain.tiling` -- inference on whole images or overlapping tiles (`predict_rain`);
* `mgid.derain.memory_budget` -- ``--tile auto``: the tile size from a memory budget;
* `mgid.derain.self_ensemble` -- the optional geometric self-ensemble;
* `mgid.derain.files` / `mgid.derain.video` -- ``mgid derain`` on image files and folders / on videos;
* `mgid.derain.onnx_export`, `mgid.derain.onnx_graphs`, `mgid.derain.onnx_backend` -- ``mgid export`` (ONNX,
  TorchScript) and running the ONNX file with onnxruntime (`OnnxDerainer`, the sibling of `Derainer`);
* `mgid.derain.web`, `mgid.derain.web_jobs`, `mgid.derain.time_limit` -- ``mgid web``, its job queue and the
  per-photo time limit.
"""
from mgid.derain.derainer import BaseDerainer, Derainer, load_model

__all__ = ["BaseDerainer", "Derainer", "load_model"]
