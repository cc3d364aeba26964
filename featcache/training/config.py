"""Training configs: everything a VQ pre-training or OCL run depends on (saved as config.yaml in its run folder).

Both configs hold the training loop's settings as one nested section, ``train`` (a :class:`TrainSettings`):
``--set train.steps=100``, or ``train: {steps: 100, learning_rate: 4e-4}`` in YAML. Run folders written before
the section existed saved those keys flat; :func:`featcache.config.moved_keys` declares where each went, so
``from_dict`` loads them and an old key typed by hand fails naming its new place.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal, TypeVar

from featcache.config import moved_keys
from featcache.errors import ConfigError
from featcache.ocl import OCLModelConfig
from featcache.quantize import QuantizerConfig, VQDecoderConfig
from featcache.training.schedule import LR_SCHEDULES, scheduled_lr

C = TypeVar("C", "VQTrainConfig", "OCLTrainConfig")


@dataclass(frozen=True)
class TrainSettings:
    """The training loop's settings, shared by every training config (its ``train`` section).

    Steps, batch size and learning rate have no default here: each config's ``train`` default sets its own (VQ:
    30000, 64, 2e-3; OCL: 50000, 32, 2e-4), so a section built by hand cannot take another stage's by accident.
    The schedule fields are checked here, once, for every stage.
    """

    steps: int
    batch_size: int
    learning_rate: float
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
    #: Seed of the model's initialisation and noise.
    seed: int = 0
    #: Seed of the batch order (and OCL's view choice); None = ``seed``. Sweeps fix it so seeds vary only the
    #: model's initialisation and noise (and fused seeds can share one batch stream).
    data_seed: int | None = None
    #: bf16 autocast on CUDA (ignored on CPU).
    amp: bool = True
    log_every: int = 50
    checkpoint_every: int = 1000
    #: ``auto``: arrays in RAM/GPU memory when they fit, else streamed chunks.
    loader: Literal["auto", "memory", "stream"] = "auto"

    def __post_init__(self) -> None:
        # Checked where the values are read, so train-vq, train-ocl and sweeps (which build configs at spec load)
        # refuse before any run, naming the key, instead of training on an empty batch until the loss is NaN.
        for key in ("steps", "batch_size", "log_every", "checkpoint_every"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"config key 'train.{key}' must be an integer of at least 1, got {value!r}")
        for key, limit in (("learning_rate", "finite "), ("grad_clip", "")):  # grad_clip .inf: no clipping
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= (float("inf") if not limit else 1e300):
                raise ConfigError(f"config key 'train.{key}' must be a positive {limit}number, got {value!r}")
        if not 0.0 <= self.final_lr_ratio < float("inf"):
            raise ConfigError(f"config key 'train.final_lr_ratio' must be a finite number of at least 0, got {self.final_lr_ratio!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(
                f"config key 'train.lr_schedule' must be one of {', '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}"
            )
        if not 0.0 <= self.warmup_fraction < 1.0:
            raise ConfigError(f"config key 'train.warmup_fraction' must lie in [0, 1), got {self.warmup_fraction}")
        if self.warmup_steps is not None and self.warmup_steps < 0:
            raise ConfigError(
                f"config key 'train.warmup_steps' must not be negative (or null = warmup_fraction), got {self.warmup_steps}"
            )
        if self.lr_half_life < 1:
            raise ConfigError(f"config key 'train.lr_half_life' must be at least 1, got {self.lr_half_life}")

    @property
    def resolved_data_seed(self) -> int:
        """The seed of the batch order and view choice: ``data_seed``, else ``seed``."""
        return self.seed if self.data_seed is None else self.data_seed

    @property
    def resolved_warmup_steps(self) -> int:
        """``warmup_steps`` when set, else ``int(warmup_fraction * steps)``."""
        return int(self.warmup_fraction * self.steps) if self.warmup_steps is None else self.warmup_steps

    def learning_rate_at(self, step: int) -> float:
        """The learning rate of optimiser step ``step`` (0-based): a pure function of the step, so resumes match."""
        return scheduled_lr(
            self.lr_schedule, step, self.steps, self.learning_rate, self.resolved_warmup_steps, self.final_lr_ratio, self.lr_half_life
        )


#: The ``train`` keys both configs saved flat (at the top level) before the section existed.
_FLAT_TRAIN_KEYS = (
    "steps", "batch_size", "learning_rate", "warmup_fraction", "final_lr_ratio", "lr_schedule", "warmup_steps",
    "lr_half_life", "grad_clip", "seed", "amp", "log_every", "checkpoint_every", "loader",
)


@dataclass(frozen=True)
class VQTrainConfig:
    """Everything a quantizer pre-training run depends on (saved as config.yaml in the run folder)."""

    quantizer: QuantizerConfig = field(default_factory=QuantizerConfig)
    decoder: VQDecoderConfig = field(default_factory=VQDecoderConfig)
    #: Feature kind read from the store: ``auto`` = final_norm when derivable (VVO), else the stored kind.
    feature_kind: str = "auto"
    #: The training loop's settings (``train.steps``, ``train.learning_rate``, ...).
    train: TrainSettings = field(default_factory=lambda: TrainSettings(steps=30000, batch_size=64, learning_rate=2e-3))


moved_keys(VQTrainConfig, {key: f"train.{key}" for key in _FLAT_TRAIN_KEYS})


@dataclass(frozen=True)
class DistillConfig:
    """SPOT's self-training (stage 2; gkakogeorgiou/spot ``train_spot_2.py``): the student's slot attention learns a
    frozen teacher's decoder masks, ``L = L_rec + weight * L_att`` (featcache.ocl.distill). Off unless ``enabled``."""

    enabled: bool = False
    #: The teacher's run folder (a finished train-ocl run on the same store, e.g. spot-tfd9), read frozen.
    teacher: str = ""
    #: lambda of ``L_rec + lambda * L_att``: SPOT's ``ce_weight`` (5e-3, constant as with its default ``final_ce_weight``).
    weight: float = 5e-3
    #: Reading order of the teacher's decoder: ``random``: one of its orders per batch (SPOT's
    #: ``teacher_eval_permutations random``); ``raster``: raster order only.
    teacher_order: Literal["random", "raster"] = "random"
    #: Start the student from the teacher's weights. SPOT does not (its student is a fresh model; only the teacher
    #: loads a checkpoint, train_spot_2.py lines 157-171), hence false.
    init_from_teacher: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.weight, bool) or not isinstance(self.weight, (int, float)) or not 0 <= self.weight < float("inf"):
            raise ConfigError(f"config key 'distill.weight' must be a finite number of at least 0, got {self.weight!r}")
        if self.teacher_order not in ("random", "raster"):
            raise ConfigError(f"config key 'distill.teacher_order' must be random or raster, got {self.teacher_order!r}")


@dataclass(frozen=True)
class OCLTrainConfig:
    """Everything an OCL run depends on (saved as config.yaml; ``eval`` rebuilds the model from it)."""

    model: OCLModelConfig = field(default_factory=OCLModelConfig)
    #: Token set of the store (written by `featcache tokenize`) for token / code targets; "" = none.
    tokens: str = ""
    #: ``auto`` = final_norm when derivable (VVO's input), else the stored kind; ``last_block`` for DINOSAUR.
    feature_kind: str = "auto"
    #: The training loop's settings (``train.steps``, ``train.learning_rate``, ``train.seed``, ...).
    train: TrainSettings = field(default_factory=lambda: TrainSettings(steps=50000, batch_size=32, learning_rate=2e-4))
    #: Steps between validations (loss-free mask metrics on the validation store or held-in samples).
    validate_every: int = 1000
    #: Images of the centre view scored at each validation.
    validation_images: int = 64
    #: SPOT self-training from a teacher run (``distill.enabled``, ``distill.teacher``); off by default.
    distill: DistillConfig = field(default_factory=DistillConfig)

    def __post_init__(self) -> None:
        if isinstance(self.validate_every, bool) or not isinstance(self.validate_every, int) or self.validate_every < 0:
            raise ConfigError(f"config key 'validate_every' must be an integer of at least 0 (0 = never), got {self.validate_every!r}")
        if isinstance(self.validation_images, bool) or not isinstance(self.validation_images, int) or self.validation_images < 1:
            raise ConfigError(f"config key 'validation_images' must be an integer of at least 1, got {self.validation_images!r}")


moved_keys(OCLTrainConfig, {key: f"train.{key}" for key in (*_FLAT_TRAIN_KEYS, "data_seed")})


def with_seed(config: C, seed: int) -> C:
    """``config`` (a VQ or OCL training config) with ``train.seed`` set to ``seed``."""
    return replace(config, train=replace(config.train, seed=seed))  # type: ignore[attr-defined,type-var]
