"""Object-centric models trained from cached features: config and model."""

from __future__ import annotations

from featcache.ocl.config import OCLModelConfig
from featcache.ocl.model import OCLModel, OCLOutput, build_projection

__all__ = ["OCLModel", "OCLModelConfig", "OCLOutput", "build_projection"]
