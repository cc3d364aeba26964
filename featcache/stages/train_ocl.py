"""`featcache train-ocl`: train an OCL model (aggregator + decoder only) straight from cached features and tokens.

The mechanics (batches, validation, checkpoints, exact resume) live in :mod:`featcache.training.ocl`;
fused seeds in :mod:`featcache.training.fused`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from featcache.operations import declare, param
from featcache.stages.train import TrainingOperation


@dataclass(frozen=True)
class TrainOCLParams:
    store: str = param("", help="A complete feature store (with the token set the config names, if any).", role="input", required=True)
    out: str = param("", help="Run folder (weights, config.yaml, run.json, metrics).", role="out", required=True)
    config: list[str] = param(help="OCL config file(s) (configs/ocl/), layered in order, e.g. a method then tiny.yaml.", role="config",
                              default_factory=list)
    set: dict[str, Any] = param(help="Config override key=value (repeatable), e.g. model.aggregator.num_slots=5.", role="set",
                                default_factory=dict)
    val_store: str | None = param(None, help="Store for periodic validation (default: the training store's first images).", role="input")
    online: bool = param(False, help="Baseline: compute VFM features (and tokens) from the images every step.")
    device: str = param("auto", help="auto | cpu | cuda", role="runtime")
    resume: bool = param(False, help="Continue the run in --out from its last checkpoint.", role="cli")


class TrainOCL(TrainingOperation):
    """Train an OCL model (aggregator + decoder only) straight from cached features and tokens."""

    name = "train-ocl"
    params_type = TrainOCLParams

    def config_class(self) -> type:
        from featcache.training.config import OCLTrainConfig

        return OCLTrainConfig

    def train(self, params: TrainOCLParams, config: Any, resume: bool, show_progress: bool) -> Any:
        from featcache.training.ocl import train_ocl

        return train_ocl(params.store, config, params.out, device=params.device, resume=resume, online=params.online,
                         validation_store=params.val_store, show_progress=show_progress)


TRAIN_OCL = declare(TrainOCL())
