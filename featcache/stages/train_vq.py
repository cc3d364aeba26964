"""`featcache train-vq`: pre-train the VVO quantizer on cached features (only the quantizer and its decoder train).

The mechanics (loop, checkpoints, exact resume, reconstructions PNG) live in :mod:`featcache.training.vq`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from featcache.operations import declare, param
from featcache.stages.train import TrainingOperation


@dataclass(frozen=True)
class TrainVQParams:
    store: str = param("", help="A complete feature store.", role="input", required=True)
    out: str = param("", help="Run folder (weights, config.yaml, run.json, metrics, reconstructions.png).", role="out", required=True)
    config: list[str] = param(help="VQ config file(s) (configs/vq/), layered in order; default: the paper's settings.", role="config",
                              default_factory=list)
    set: dict[str, Any] = param(help="Config override key=value (repeatable), e.g. quantizer.codebook_size=1024.", role="set",
                                default_factory=dict)
    online: bool = param(False, help="Baseline: compute VFM features from the images every step.")
    device: str = param("auto", help="auto | cpu | cuda", role="runtime")
    resume: bool = param(False, help="Continue the run in --out from its last checkpoint.", role="cli")


class TrainVQ(TrainingOperation):
    """Pre-train the VVO quantizer on cached features (only the quantizer and its decoder train)."""

    name = "train-vq"
    params_type = TrainVQParams

    def config_class(self) -> type:
        from featcache.training.config import VQTrainConfig

        return VQTrainConfig

    def train(self, params: TrainVQParams, config: Any, resume: bool, show_progress: bool) -> Any:
        from featcache.training.vq import train_vq

        return train_vq(params.store, config, params.out, device=params.device, resume=resume, online=params.online, show_progress=show_progress)


TRAIN_VQ = declare(TrainVQ())
