"""SPOT's self-training loss (stage 2 of SPOT, gkakogeorgiou/spot): a student's slot attention learns the teacher's
decoder masks.

Mirrors ``train_spot_2.py`` (the training step, lines 262-276 of commit 13c5926; the frozen teacher, lines 159-172) and ``utils_spot.py``
(``att_matching``, ``pairwise_IoU_efficient``):

1. the teacher's decoder attention (B, S, N) is made hard by a row-wise argmax over slots (``dec_masks``);
2. the student's slot attention is made hard the same way, and the two sets of S hard masks are matched by the
   Hungarian algorithm (scipy ``linear_sum_assignment``) on the cost ``1 - IoU``, one row per teacher slot; rows
   of teacher slots that own no position cost 1e3 everywhere (``att_matching``'s ``is_padding``), so those
   slots take whatever student slot is left;
3. the student's attention logits (the pre-softmax scores of its last Slot Attention round, ``attn_logits``) are
   permuted so that channel t is the student slot matched to teacher slot t, and scored with cross-entropy against
   the teacher's hard labels, averaged over all B x N positions (``CrossEntropyLoss`` on (B, S, H, W)).

The total loss is ``L_rec + weight * L_att`` (``mse + ce_weight * ce_loss``; ``ce_weight`` 5e-3, constant unless
``final_ce_weight`` is given). The matching is not differentiated (indices only), as in the official code.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

from featcache.errors import FeatcacheError
from featcache.ocl.model import OCLModel

#: The cost ``att_matching`` gives every pairing of a teacher slot that owns no position.
EMPTY_TEACHER_SLOT_COST = 1e3


@dataclass
class DistillationLoss:
    """loss: scalar cross-entropy; assignment: (B, S) int64, the student slot matched to each teacher slot;
    iou: (B, S) the IoU of each matched pair (hard masks)."""

    loss: torch.Tensor
    assignment: torch.Tensor
    iou: torch.Tensor


def pairwise_iou(teacher_labels: torch.Tensor, student_labels: torch.Tensor, num_slots: int) -> torch.Tensor:
    """Hard masks as slot labels (B, N) each -> IoU (B, S_teacher, S_student) in float32 (union clamped at 1e-6,
    as ``pairwise_IoU_efficient``)."""
    teacher = F.one_hot(teacher_labels, num_slots).float().transpose(1, 2)  # (B, S, N)
    student = F.one_hot(student_labels, num_slots).float().transpose(1, 2)  # (B, S, N)
    intersection = torch.einsum("btn,bsn->bts", teacher, student)  # (B, S, S)
    union = teacher.sum(-1)[:, :, None] + student.sum(-1)[:, None, :] - intersection
    return intersection / union.clamp(min=1e-6)


def match_slots(teacher_labels: torch.Tensor, student_labels: torch.Tensor, num_slots: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Hungarian matching of hard masks (labels (B, N) each): (assignment (B, S) int64, the student slot for each
    teacher slot; the matched IoU (B, S)). Teacher slots with an empty mask cost 1e3 against every student slot."""
    iou = pairwise_iou(teacher_labels, student_labels, num_slots)  # (B, S_t, S_s)
    cost = 1.0 - iou
    empty = F.one_hot(teacher_labels, num_slots).sum(1) == 0  # (B, S_t)
    cost[empty] = EMPTY_TEACHER_SLOT_COST
    assignment = np.stack([linear_sum_assignment(matrix)[1] for matrix in cost.detach().cpu().numpy()])  # (B, S)
    assignment_tensor = torch.from_numpy(assignment).long().to(teacher_labels.device)
    matched = iou.gather(2, assignment_tensor[:, :, None])[..., 0]  # (B, S)
    return assignment_tensor, matched


def spot_distillation_loss(student_logits: torch.Tensor, teacher_masks: torch.Tensor) -> DistillationLoss:
    """student_logits (B, S, N): the student's slot-attention logits (softmax over S gives its attention);
    teacher_masks (B, S, N): the teacher's decoder masks (any scores whose argmax over S is the teacher's slot)
    -> the matched cross-entropy of SPOT's self-training (see the module docstring)."""
    if student_logits.ndim != 3 or student_logits.shape != teacher_masks.shape:
        raise FeatcacheError(
            f"student logits and teacher masks must both be (B, S, N), got {tuple(student_logits.shape)} and {tuple(teacher_masks.shape)}"
        )
    num_slots = student_logits.shape[1]
    teacher_labels = teacher_masks.argmax(dim=1)  # (B, N)
    student_labels = student_logits.detach().argmax(dim=1)  # (B, N): the argmax of the softmax attention
    assignment, iou = match_slots(teacher_labels, student_labels, num_slots)
    permuted = student_logits.float().gather(1, assignment[:, :, None].expand(-1, -1, student_logits.shape[2]))  # (B, S, N)
    loss = F.cross_entropy(permuted, teacher_labels)  # mean over the B x N positions
    return DistillationLoss(loss=loss, assignment=assignment, iou=iou)


@torch.no_grad()
def teacher_decoder_masks(
    teacher: OCLModel,
    features: torch.Tensor,
    tokens: torch.Tensor | None,
    generator: torch.Generator | None,
    order_mode: str = "random",
) -> torch.Tensor:
    """The frozen teacher's decoder masks (B, S, N) for a batch of the student's inputs (the same view).

    ``train_spot_2.py`` runs the teacher in eval mode with ``teacher_eval_permutations random``: one of the nine
    orders drawn per batch (``random.choice``) for the whole batch; ``order_mode: random`` draws it from
    ``generator``, ``raster`` reads in raster order (featcache's eval default). Decoders without orders (Mlp's
    alphas) give their masks as they are. Slot noise follows the teacher's eval mode (its ``query_noise``).
    """
    if teacher.training:
        raise FeatcacheError("the teacher must be in eval mode (frozen); call teacher.eval()")
    batch_size = features.shape[0]
    noise = teacher.draw_noise(batch_size, generator, features.device)
    aggregated = teacher.aggregate(features, noise["aggregator"])
    targets = teacher.decoder_targets(features, tokens)
    orders = getattr(teacher.decoder, "orders", None)
    if orders is not None and hasattr(teacher.decoder, "predict"):
        order = None
        if order_mode == "random" and orders.shape[0] > 1:
            draw = torch.randint(0, orders.shape[0], (1,), generator=generator, device=features.device)
            order = draw.expand(batch_size).contiguous()  # (B,): one order for the batch
        _, attention = teacher.decoder.predict(aggregated.slots, targets, order)  # (B, N, S), raster order
        return attention.float().transpose(1, 2)  # (B, S, N)
    decoded = teacher.decoder(aggregated.slots, targets, noise["decoder"])
    if decoded.masks is None:
        raise FeatcacheError(f"teacher decoder {teacher.config.decoder.name} returns no masks; SPOT distils decoder masks")
    return decoded.masks.float().flatten(2)  # (B, S, h, w) -> (B, S, N)
