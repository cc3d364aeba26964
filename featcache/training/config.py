"""Training configs: everything a VQ pre-training or OCL run depends on (saved as config.yaml in its run folder)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from featcache.ocl import OCLModelConfig
from featcache.quantize import QuantizerConfig, VQDecoderConfig


@dataclass(frozen=True)
class VQTrainConfig:
    """Everything a quantizer pre-training run depends on (saved as config.yaml in the run folder)."""

    quantizer: QuantizerConfig = field(default_factory=QuantizerConfig)
    decoder: VQDecoderConfig = field(default_factory=VQDecoderConfig)
    #: Feature kind read from the store: ``auto`` = final_norm when derivable (VVO), else the stored kind.
    feature_kind: str = "auto"
    steps: int = 30000
    batch_size: int = 64
    learning_rate: float = 2e-3
    warmup_fraction: float = 0.05
    final_lr_ratio: float = 1e-3
    #: Learning-rate schedule: ``cosine`` (linear warm-up from lr/warmup at the first step, cosine to
    #: final_lr_ratio at the last), ``vvo-cosine`` (VVO's CbLinearCosine: warm-up from 0, cosine one step later),
    #: ``constant`` (warm-up from 0, then constant), ``exponential`` (OCLF's DINOSAUR: warm-up from 0, then the
    #: lr halves every lr_half_life steps). See featcache.training.schedule.
    lr_schedule: Literal["cosine", "vvo-cosine", "constant", "exponential"] = "cosine"
    #: Warm-up length in steps (OCLF's DINOSAUR: 10000); null = warmup_fraction of the steps.
    warmup_steps: int | None = None
    #: Steps per halving of the lr in the ``exponential`` schedule (OCLF's DINOSAUR: 100000).
    lr_half_life: int = 100000
    grad_clip: float = 1.0
    seed: int = 0
    #: bf16 autocast on CUDA (ignored on CPU).
    amp: bool = True
    log_every: int = 50
    checkpoint_every: int = 1000
    #: ``auto``: arrays in RAM/GPU memory when they fit, else streamed chunks.
    loader: Literal["auto", "memory", "stream"] = "auto"


@dataclass(frozen=True)
class OCLTrainConfig:
    """Everything an OCL run depends on (saved as config.yaml; ``eval`` rebuilds the model from it)."""

    model: OCLModelConfig = field(default_factory=OCLModelConfig)
    #: Token set of the store (written by `featcache tokenize`) for token / code targets; "" = none.
    tokens: str = ""
    #: ``auto`` = final_norm when derivable (VVO's input), else the stored kind; ``last_block`` for DINOSAUR.
    feature_kind: str = "auto"
    steps: int = 50000
    batch_size: int = 32
    learning_rate: float = 2e-4
    warmup_fraction: float = 0.05
    final_lr_ratio: float = 1e-3
    #: Learning-rate schedule: ``cosine`` (linear warm-up from lr/warmup at the first step, cosine to
    #: final_lr_ratio at the last), ``vvo-cosine`` (VVO's CbLinearCosine: warm-up from 0, cosine one step later),
    #: ``constant`` (warm-up from 0, then constant), ``exponential`` (OCLF's DINOSAUR: warm-up from 0, then the
    #: lr halves every lr_half_life steps). See featcache.training.schedule.
    lr_schedule: Literal["cosine", "vvo-cosine", "constant", "exponential"] = "cosine"
    #: Warm-up length in steps (OCLF's DINOSAUR: 10000); null = warmup_fraction of the steps.
    warmup_steps: int | None = None
    #: Steps per halving of the lr in the ``exponential`` schedule (OCLF's DINOSAUR: 100000).
    lr_half_life: int = 100000
    grad_clip: float = 1.0
    seed: int = 0
    #: Seed of the batch order and the view choice; None = ``seed``. Sweeps fix it so seeds vary only the
    #: model's initialisation and noise (and fused seeds can share one batch stream).
    data_seed: int | None = None
    amp: bool = True
    log_every: int = 50
    #: Steps between validations (loss-free mask metrics on the validation store or held-in samples).
    validate_every: int = 1000
    #: Images of the centre view scored at each validation.
    validation_images: int = 64
    checkpoint_every: int = 1000
    loader: Literal["auto", "memory", "stream"] = "auto"


def data_seed(config: OCLTrainConfig) -> int:
    """The seed of the run's batch order and view choice (``data_seed``, else ``seed``)."""
    return config.seed if config.data_seed is None else config.data_seed
