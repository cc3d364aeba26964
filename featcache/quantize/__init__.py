"""Quantizer pre-training (VVO): a VQ model trained on cached VFM features, then frozen for object-centric learning."""

from featcache.quantize.codebook import SimVQCodebook, chi_moments, code_similarities, nearest_codes, squared_distances
from featcache.quantize.config import QuantizerConfig, VQDecoderConfig
from featcache.quantize.decoder import FeatureDecoder, PixelDecoder, TinyResidualBlock, VVOPixelDecoder, pixel_targets, upsampling_stages
from featcache.quantize.encoder import FeatureEncoder
from featcache.quantize.lookup import CodeLookup, token_set_quantizer
from featcache.quantize.model import VQModel, VQOutput
from featcache.quantize.msf import MSFQuantizer, MSFQuantizerConfig, MSFQuantizerOutput
from featcache.quantize.quantizer import QuantizerOutput, VectorQuantizer
from featcache.quantize.registry import QUANTIZERS, build_quantizer, decoder_input_dim
from featcache.quantize.schedules import gumbel_scale, residual_alpha
from featcache.quantize.usage import code_usage_statistics, usage_statistics_from_counts

__all__ = [
    "CodeLookup",
    "VQDecoderConfig",
    "FeatureDecoder",
    "FeatureEncoder",
    "MSFQuantizer",
    "MSFQuantizerConfig",
    "MSFQuantizerOutput",
    "PixelDecoder",
    "QUANTIZERS",
    "QuantizerConfig",
    "QuantizerOutput",
    "SimVQCodebook",
    "TinyResidualBlock",
    "VQModel",
    "VQOutput",
    "VVOPixelDecoder",
    "VectorQuantizer",
    "chi_moments",
    "code_similarities",
    "build_quantizer",
    "code_usage_statistics",
    "decoder_input_dim",
    "gumbel_scale",
    "nearest_codes",
    "pixel_targets",
    "residual_alpha",
    "squared_distances",
    "token_set_quantizer",
    "upsampling_stages",
    "usage_statistics_from_counts",
]
