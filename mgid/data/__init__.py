"""Data for MGID: image I/O, bundled photos, synthetic rain, time-lapse pairs and paired test sets.

Network tensors are (3, H, W) float32 in [-1, 1] (RGB, ``x / 127.5 - 1``); host images are HxWx3
uint8 RGB. See `mgid.data.imageio`.
"""
from .embedded import EmbeddedDataConfig, EmbeddedTimeLapse
from .folders import TimeLapseFolder, detect_layout
from .heldout_sets import EmbeddedPairedSet
from .imageio import IMAGE_SUFFIXES, image_size, list_images, read_image, to_tensor, to_uint8, write_image
from .paired import PairedFolder, PairingResult, find_pairs
from .photos import list_photos, load_photo
from .synthetic_export import write_synthetic_dataset
from .synthetic_rain import RainConfig, add_rain, render_rain_layer
from .timelapse import make_dataset

__all__ = [
    "IMAGE_SUFFIXES",
    "EmbeddedDataConfig",
    "EmbeddedPairedSet",
    "EmbeddedTimeLapse",
    "PairedFolder",
    "PairingResult",
    "RainConfig",
    "TimeLapseFolder",
    "add_rain",
    "detect_layout",
    "find_pairs",
    "image_size",
    "list_images",
    "list_photos",
    "load_photo",
    "make_dataset",
    "read_image",
    "render_rain_layer",
    "to_tensor",
    "to_uint8",
    "write_image",
    "write_synthetic_dataset",
]
