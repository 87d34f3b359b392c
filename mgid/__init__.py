"""mgid: memory-guided image de-raining trained on time-lapse data (Cho, Kim, Sohn, TIP 2022).

``mgid.load_model(weights=None, device="auto")`` returns a `mgid.derain.derainer.Derainer`:
``mgid.load_model().derain(rgb_uint8)`` de-rains an HxWx3 uint8 RGB image with the shipped weights.
"""
import torch  # noqa: F401  (the compiled extension links against torch: import it first)

__version__ = "0.1.0"

__all__ = ["__version__", "load_model", "save_pretrained", "from_pretrained"]


def __getattr__(name: str):
    # Lazy: `import mgid` stays light (no OpenCV / scikit-image) until the API is used.
    if name == "load_model":
        from mgid.derain.derainer import load_model

        return load_model
    if name in ("save_pretrained", "from_pretrained"):
        from mgid.models import pretrained

        return getattr(pretrained, name)
    raise AttributeError(f"module 'mgid' has no attribute {name!r}")
