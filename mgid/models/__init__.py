"""MGID network: encoder, memory, decoder and the assembled `MGIDNet`."""
from mgid.models.decoder import Decoder
from mgid.models.encoder import DOWNSAMPLE, Encoder, EncoderFeatures, NormStats
from mgid.models.memory import MemoryModule, MemoryOutput, random_unit_items
from mgid.models.mgid import MGIDNet, MGIDOutput, ModelConfig, image_size_problem, pad_to_multiple
from mgid.models.official import convert_official_state_dict

__all__ = [
    "DOWNSAMPLE", "Decoder", "Encoder", "EncoderFeatures", "MGIDNet", "MGIDOutput", "MemoryModule",
    "MemoryOutput", "ModelConfig", "NormStats", "convert_official_state_dict", "image_size_problem", "pad_to_multiple",
    "random_unit_items",
]
