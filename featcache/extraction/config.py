"""The extraction config: one object, saved in the store, compared field by field on resume/append."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ExtractConfig:
    """What a store is made of. Every field except the runtime ones below is part of the store's identity."""

    #: VFM registry name (``featcache info --encoders`` lists them).
    vfm: str = "dino2-s14"
    #: ``hub`` (timm pretrained), ``random`` (explicit, recorded, warned about) or a checkpoint path.
    weights: str = "hub"
    #: Seed for ``weights: random`` (every worker builds bit-identical weights from it).
    weight_seed: int = 0
    #: Model input side in pixels; 0 = the VFM's default (224 for DINOv2 ViT-S/14 -> 16x16 patches).
    resolution: int = 0
    #: Random resized crops added after the centre crop and its flip (VVO's recipe).
    crops: int = 0
    #: Seed of the random crops; crop parameters depend only on (seed, sample, view).
    view_seed: int = 0
    #: Side of the cached view images (the VQ decoder reconstructs 128 x 128 pixels); 0 = keep no images.
    image_size: int = 128
    #: Side of the cached instance masks: the evaluation resolution (VVO 256; DINOSAUR 320).
    mask_size: int = 256
    #: Samples per chunk = per write unit (chosen by benchmarks/RESULTS.md: fixed per-chunk read cost).
    samples_per_chunk: int = 32
    #: zstd level of the blosc compressor.
    compression_level: int = 1

    # ---- runtime only: may differ between a run and its resume without changing a byte ----
    #: Images per forward pass (views count as images).
    batch_size: int = 32
