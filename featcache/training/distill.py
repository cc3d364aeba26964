"""SPOT self-training in train-ocl: the frozen teacher run, its checks and fingerprint, and the distilled loss.

As ``train_spot_2.py`` (gkakogeorgiou/spot): the teacher is a finished first-stage run loaded once, frozen
(``requires_grad_(False)``, eval mode), and sees the same inputs as the student each step (the same batch of the
same view); the student starts fresh (``distill.init_from_teacher`` false). The teacher's weights sha256 is recorded
in run.json (``teacher``) and ``--resume`` refuses a teacher whose weights changed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from featcache.errors import ConfigError, StoreError
from featcache.ocl import OCLModel, OCLOutput
from featcache.ocl.distill import spot_distillation_loss, teacher_decoder_masks
from featcache.provenance import file_sha256
from featcache.store import FeatureStore
from featcache.training.checkpoint import WEIGHTS_NAME
from featcache.training.config import OCLTrainConfig
from featcache.training.runs import load_ocl_run


@dataclass
class Teacher:
    """The frozen teacher model, how its decoder is read, and its provenance (run.json ``teacher``)."""

    model: OCLModel
    order_mode: str
    info: dict[str, Any]

    def masks(self, features: torch.Tensor, tokens: torch.Tensor | None, generator: torch.Generator | None) -> torch.Tensor:
        """The teacher's decoder masks (B, S, N) for the student's batch."""
        return teacher_decoder_masks(self.model, features, tokens, generator, self.order_mode)


def load_teacher(config: OCLTrainConfig, store: FeatureStore, feature_kind: str, device: torch.device) -> Teacher:
    """The teacher of ``config.distill``, checked against the student's store, features, tokens and slots (one-line
    errors), frozen on ``device``."""
    distill = config.distill
    if not distill.teacher:
        raise ConfigError("config key 'distill.teacher' must name the teacher's run folder (e.g. --set distill.teacher=runs/spot-teacher)")
    if config.model.temporal.enabled:
        raise ConfigError("distill (SPOT self-training) trains image models; model.temporal.enabled must be false")
    run_dir = Path(distill.teacher)
    if not run_dir.is_dir():
        raise ConfigError(f"distill.teacher {run_dir} is not a folder; expected a finished train-ocl run")
    model, teacher_config, info = load_ocl_run(run_dir, store, device)  # same VFM, channels and grid, or refused
    trained = info["store"]
    if trained.get("identity") != store.attributes["identity"]:
        raise StoreError(f"teacher {run_dir} was trained on store {trained.get('path')} (another identity); the student trains on {store.path}: train the teacher on this store")
    if trained.get("feature_kind") != feature_kind:
        raise ConfigError(f"teacher {run_dir} reads {trained.get('feature_kind')} features, the student {feature_kind}; set feature_kind={trained.get('feature_kind')}")
    if not isinstance(model, OCLModel) or not getattr(model.decoder, "returns_masks", False):
        raise ConfigError(f"teacher {run_dir} ({teacher_config.model.decoder.name}) has no decoder masks to distil; use a Tfd (spot-tfd9) or Mlp run")
    if teacher_config.tokens and teacher_config.tokens != config.tokens:
        raise ConfigError(f"teacher {run_dir} reads token set {teacher_config.tokens!r}; set tokens={teacher_config.tokens} for the student too")
    if teacher_config.model.aggregator.num_slots != config.model.aggregator.num_slots:
        raise ConfigError(
            f"teacher {run_dir} has {teacher_config.model.aggregator.num_slots} slots, the student "
            f"{config.model.aggregator.num_slots}; SPOT matches slot for slot (set model.aggregator.num_slots)"
        )
    sha256 = file_sha256(run_dir / WEIGHTS_NAME)
    record = {"run": str(run_dir), "weights_sha256": sha256, "decoder": teacher_config.model.decoder.name, "step": info.get("step")}
    return Teacher(model=model, order_mode=distill.teacher_order, info=record)


def init_student_from_teacher(student: torch.nn.Module, teacher: Teacher) -> None:
    """``distill.init_from_teacher``: copy the teacher's weights into the student (same architecture, or refused)."""
    state = teacher.model.state_dict()
    try:
        missing, unexpected = student.load_state_dict(state, strict=False)
    except RuntimeError as error:
        raise ConfigError(f"distill.init_from_teacher: the student's model differs from the teacher's ({str(error).splitlines()[0]})") from None
    if missing or unexpected:
        raise ConfigError(f"distill.init_from_teacher: the student's model differs from the teacher's (missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})")


def distilled_loss_terms(
    output: OCLOutput, teacher: Teacher, weight: float, features: torch.Tensor, tokens: torch.Tensor | None, generator: torch.Generator | None
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``L_rec + weight * L_att`` and its logged terms (``loss_distill`` is L_att, ``loss_total`` the sum)."""
    if output.attention_logits is None:
        raise ConfigError("the student's aggregator returns no attention logits; SPOT self-training needs Slot Attention")
    masks = teacher.masks(features, tokens, generator)  # (B, S, N)
    distill = spot_distillation_loss(output.attention_logits, masks)
    total = output.loss + weight * distill.loss
    return total, {**output.losses, "distill": distill.loss.detach(), "distill_iou": distill.iou.mean().detach(), "total": total}
