"""Set prediction from slots (VVO Table 5, following DINOSAUR): what object properties a frozen slot set encodes.

Protocol (featcache's reading of it, recorded in probe.json):

- Targets per image: every ground-truth object visible in the instance mask of the view (ids 1..K; background and
  ignore pixels are not objects) with its class (the store's ``instance_classes``) and its box derived from the mask,
  normalised corners ``(x0, y0, x1, y1)`` in [0, 1] (x1 = (last column + 1) / M, so a full-image object is (0, 0, 1, 1)).
- Probe: one small MLP applied to every slot independently, predicting C + 1 class logits (the last: "no object")
  and a box (sigmoid). Slots are matched to objects per image by the Hungarian algorithm
  (``scipy.optimize.linear_sum_assignment``) over the joint cost ``class_weight * CE + box_weight * L1`` (L1 summed
  over the four coordinates). Matched slots learn the object's class and box; unmatched slots learn "no object"
  (weighted ``none_weight``, as DETR down-weights its no-object class). Objects beyond the number of slots stay
  unmatched.
- Scores on held-out images, matched the same way: top-1 accuracy over matched objects (``sklearn accuracy_score``,
  argmax over the C object classes) and box R² (``sklearn r2_score`` of the four coordinates, uniform average).
- Reference row ("mean-pooled features"): one mean-pooled VFM feature per image cannot be a set, so the reference
  probe reads S inputs per image, the pooled feature concatenated with a one-hot slot index: the same MLP and matching
  then predict S different objects from global image information only (learned queries on a pooled feature, as
  DETR's queries), which is what slots must beat to show that they separate objects.

Inputs are standardised with the training split's per-dimension mean and standard deviation.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import accuracy_score, r2_score
from torch import nn
from torch.nn import functional as F

from featcache.datasets.base import IGNORE_LABEL
from featcache.errors import FeatcacheError
from featcache.metrics.segmentation import BACKGROUND_LABEL

#: Box format of the targets and predictions.
BOX_FORMAT = "xyxy, normalised to [0, 1] (x1, y1 exclusive pixel edge / mask size)"


@dataclass(frozen=True)
class ProbeSettings:
    hidden: int = 256
    epochs: int = 100
    batch_size: int = 64
    learning_rate: float = 1e-3
    class_weight: float = 1.0
    box_weight: float = 5.0
    none_weight: float = 0.1
    seed: int = 0


@dataclass
class ObjectTargets:
    """Ground truth of one image: classes (k,) int64 (contiguous class indices) and boxes (k, 4) float32."""

    classes: np.ndarray
    boxes: np.ndarray


def mask_boxes(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Instance ids present in ``mask`` (M, M) and their boxes (k, 4) as normalised (x0, y0, x1, y1)."""
    height, width = mask.shape
    ids = [int(value) for value in np.unique(mask) if value not in (BACKGROUND_LABEL, IGNORE_LABEL)]
    boxes = np.zeros((len(ids), 4), np.float32)
    for row, instance in enumerate(ids):
        ys, xs = np.nonzero(mask == instance)
        boxes[row] = (xs.min() / width, ys.min() / height, (xs.max() + 1) / width, (ys.max() + 1) / height)
    return np.array(ids, np.int64), boxes


def object_targets(masks: np.ndarray, instance_classes: np.ndarray) -> tuple[list[tuple[np.ndarray, np.ndarray]], np.ndarray]:
    """Per image (class ids (k,) as stored, boxes (k, 4)) of masks (N, M, M) and instance_classes (N, K); and the
    sorted class ids seen. Instance id j has class ``instance_classes[i, j - 1]``; ids without a class are refused."""
    targets = []
    for mask, classes in zip(masks, instance_classes):
        ids, boxes = mask_boxes(mask)
        if len(ids) and (ids.max() > len(classes) or (classes[ids - 1] < 0).any()):
            raise FeatcacheError(f"instance ids {ids.tolist()} have no class in the store's instance_classes ({classes.tolist()})")
        targets.append((classes[ids - 1].astype(np.int64) if len(ids) else np.zeros(0, np.int64), boxes))
    seen = np.unique(np.concatenate([t[0] for t in targets])) if targets else np.zeros(0, np.int64)
    return targets, seen


def hungarian(cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Minimum-cost matching of rows (slots) to columns (objects): (rows, columns) of the min(S, k) matched pairs."""
    if cost.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    rows, columns = linear_sum_assignment(cost)
    return rows.astype(np.int64), columns.astype(np.int64)


def matching_cost(logits: torch.Tensor, boxes: torch.Tensor, classes: torch.Tensor, true_boxes: torch.Tensor,
                  class_weight: float, box_weight: float) -> torch.Tensor:
    """logits (S, C+1), boxes (S, 4), classes (k,), true boxes (k, 4) -> cost (S, k): weighted CE plus box L1 (summed)."""
    cross_entropy = -torch.log_softmax(logits, dim=-1)[:, classes]  # (S, k)
    l1 = torch.cdist(boxes, true_boxes, p=1)  # (S, k)
    return class_weight * cross_entropy + box_weight * l1


class SetPredictionProbe(nn.Module):
    """The per-slot MLP: (..., D) -> class logits (..., C + 1) and box (..., 4) in [0, 1]."""

    def __init__(self, input_dim: int, num_classes: int, hidden: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.mlp = nn.Sequential(nn.Linear(input_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, num_classes + 1 + 4))

    def forward(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.mlp(inputs)
        return out[..., : self.num_classes + 1], torch.sigmoid(out[..., self.num_classes + 1 :])


def _match_batch(logits: torch.Tensor, boxes: torch.Tensor, targets: list[ObjectTargets], settings: ProbeSettings) -> list[tuple[np.ndarray, np.ndarray]]:
    matches = []
    with torch.no_grad():
        for image, target in enumerate(targets):
            if len(target.classes) == 0:
                matches.append((np.zeros(0, np.int64), np.zeros(0, np.int64)))
                continue
            cost = matching_cost(logits[image], boxes[image], torch.from_numpy(target.classes), torch.from_numpy(target.boxes),
                                 settings.class_weight, settings.box_weight)
            matches.append(hungarian(cost.numpy()))
    return matches


def set_prediction_loss(logits: torch.Tensor, boxes: torch.Tensor, targets: list[ObjectTargets], settings: ProbeSettings) -> torch.Tensor:
    """logits (B, S, C+1), boxes (B, S, 4): ``class_weight`` x class CE over every slot (unmatched: no object,
    weighted ``none_weight``) plus ``box_weight`` x L1 of the matched boxes, both per ground-truth object."""
    batch, slots, width = logits.shape
    none = width - 1
    class_targets = torch.full((batch, slots), none, dtype=torch.long)
    box_rows, box_cols, box_true = [], [], []
    for image, (rows, columns) in enumerate(_match_batch(logits, boxes, targets, settings)):
        class_targets[image, rows] = torch.from_numpy(targets[image].classes[columns])
        box_rows += [image] * len(rows)
        box_cols += rows.tolist()
        box_true.append(targets[image].boxes[columns])
    weights = torch.ones(width)
    weights[none] = settings.none_weight
    objects = max(1, len(box_rows))
    cross_entropy = F.cross_entropy(logits.reshape(-1, width), class_targets.reshape(-1), weight=weights, reduction="sum") / objects
    loss = settings.class_weight * cross_entropy
    if box_rows:
        predicted = boxes[torch.tensor(box_rows), torch.tensor(box_cols)]  # (n, 4)
        loss = loss + settings.box_weight * (predicted - torch.from_numpy(np.concatenate(box_true))).abs().sum() / objects
    return loss


def train_probe(inputs: np.ndarray, targets: list[ObjectTargets], num_classes: int, settings: ProbeSettings) -> SetPredictionProbe:
    """Fit the probe on inputs (N, S, D) and their targets (Adam, mini-batches of images, reshuffled every epoch)."""
    generator = torch.Generator().manual_seed(settings.seed)
    torch.manual_seed(settings.seed)
    probe = SetPredictionProbe(inputs.shape[-1], num_classes, settings.hidden)
    optimizer = torch.optim.Adam(probe.parameters(), lr=settings.learning_rate)
    data = torch.from_numpy(np.ascontiguousarray(inputs, dtype=np.float32))
    for _ in range(settings.epochs):
        order = torch.randperm(len(data), generator=generator)
        for start in range(0, len(order), settings.batch_size):
            batch = order[start : start + settings.batch_size]
            logits, boxes = probe(data[batch])
            loss = set_prediction_loss(logits, boxes, [targets[int(i)] for i in batch], settings)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return probe.eval()


@torch.no_grad()
def score_probe(probe: SetPredictionProbe, inputs: np.ndarray, targets: list[ObjectTargets], settings: ProbeSettings) -> dict[str, Any]:
    """Match held-out predictions to objects (same joint cost); top-1 accuracy and box R² over matched objects."""
    logits, boxes = probe(torch.from_numpy(np.ascontiguousarray(inputs, dtype=np.float32)))
    true_classes, predicted_classes, true_boxes, predicted_boxes = [], [], [], []
    total = 0
    for image, (rows, columns) in enumerate(_match_batch(logits, boxes, targets, settings)):
        total += len(targets[image].classes)
        true_classes.append(targets[image].classes[columns])
        predicted_classes.append(logits[image, rows, : probe.num_classes].argmax(-1).numpy())
        true_boxes.append(targets[image].boxes[columns])
        predicted_boxes.append(boxes[image, rows].numpy())
    true_c, predicted_c = np.concatenate(true_classes), np.concatenate(predicted_classes)
    true_b, predicted_b = np.concatenate(true_boxes), np.concatenate(predicted_boxes)
    if len(true_c) < 2:
        raise FeatcacheError(f"the held-out split has {len(true_c)} matched objects; the probe needs at least 2 (use more images)")
    return {
        "accuracy": float(accuracy_score(true_c, predicted_c)),
        "box_r2": float(r2_score(true_b, predicted_b)),
        "objects_matched": int(len(true_c)),
        "objects_total": int(total),
        "predicted_classes": predicted_c,
        "true_classes": true_c,
        "predicted_boxes": predicted_b,
        "true_boxes": true_b,
    }


def standardise(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """z-score both with the training split's per-dimension statistics (over images and slots)."""
    flat = train.reshape(-1, train.shape[-1])
    mean, std = flat.mean(0), flat.std(0) + 1e-6
    return (train - mean) / std, (test - mean) / std


def pooled_queries(features: np.ndarray, num_slots: int) -> np.ndarray:
    """The reference inputs: features (N, h, w, C) mean-pooled per image (N, C), repeated for S slots with a one-hot
    slot index appended -> (N, S, C + S)."""
    pooled = features.reshape(features.shape[0], -1, features.shape[-1]).mean(1)  # (N, C)
    count = pooled.shape[0]
    repeated = np.repeat(pooled[:, None, :], num_slots, axis=1)  # (N, S, C)
    one_hot = np.broadcast_to(np.eye(num_slots, dtype=pooled.dtype)[None], (count, num_slots, num_slots))
    return np.concatenate([repeated, one_hot], axis=-1)


def split_indices(count: int, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded random split of ``count`` items into (train, test) positions."""
    if not 0.0 < test_fraction < 1.0:
        raise FeatcacheError(f"test_fraction is {test_fraction}; expected a fraction strictly between 0 and 1")
    order = np.random.default_rng(seed).permutation(count)
    held_out = max(1, int(round(count * test_fraction)))
    if held_out >= count:
        raise FeatcacheError(f"{count} images cannot be split into train and test (test_fraction {test_fraction})")
    return np.sort(order[held_out:]), np.sort(order[:held_out])


def run_probe(inputs: np.ndarray, raw_targets: list[tuple[np.ndarray, np.ndarray]], classes: np.ndarray, train: np.ndarray,
              test: np.ndarray, settings: ProbeSettings) -> dict[str, Any]:
    """Train on ``train`` positions and score on ``test`` of inputs (N, S, D); classes are the store's class ids."""
    index = {int(value): position for position, value in enumerate(classes)}
    targets = [ObjectTargets(np.array([index[int(c)] for c in cls], np.int64), boxes.astype(np.float32)) for cls, boxes in raw_targets]
    train_inputs, test_inputs = standardise(inputs[train], inputs[test])
    probe = train_probe(train_inputs, [targets[i] for i in train], len(classes), settings)
    scores = score_probe(probe, test_inputs, [targets[i] for i in test], settings)
    train_classes = np.concatenate([targets[i].classes for i in train])
    majority = np.bincount(train_classes, minlength=len(classes)).argmax() if len(train_classes) else 0
    scores["majority_accuracy"] = float(accuracy_score(scores["true_classes"], np.full_like(scores["true_classes"], majority)))
    return scores


def settings_record(settings: ProbeSettings) -> dict[str, Any]:
    return asdict(settings)


def probe_slot_set(
    store_path: str,
    slots_name: str,
    view: str = "center",
    settings: ProbeSettings | None = None,
    test_fraction: float = 0.2,
    reference: bool = True,
    limit: int | None = None,
    show_progress: bool = False,
) -> dict[str, Any]:
    """The set-prediction probe on a slot set (and the mean-pooled reference); returns the probe.json record."""
    from featcache import records
    from featcache.console import progress_bar
    from featcache.store import FeatureStore
    from featcache.store.slots import SlotSet

    settings = settings or ProbeSettings()
    store = FeatureStore(store_path)
    slot_set = SlotSet(store, slots_name)
    slot_set.require_current()
    if not store.has_masks:
        raise FeatcacheError(f"store {store.path} has no instance masks: the set-prediction probe derives its boxes from them")
    indices = store.valid_indices()
    if limit is not None:
        indices = indices[:limit]
    masks = store.masks(indices, view=view)  # (N, M, M)
    raw_targets, classes = object_targets(masks, store.instance_classes(indices))
    if len(classes) == 0:
        raise FeatcacheError(f"store {store.path} has no objects with classes in view {view!r}: nothing to predict")
    train, test = split_indices(len(indices), test_fraction, settings.seed)
    rows: dict[str, dict[str, Any]] = {}
    inputs = {"slots": lambda: slot_set.slots(indices, view=view)}  # (N, S, D)
    if reference:
        kind = slot_set.attributes.get("feature_kind")
        inputs["mean-pooled features"] = lambda: pooled_queries(store.features(indices, view=view, kind=kind).astype(np.float32), slot_set.num_slots)
    with progress_bar("probes", disable=not show_progress) as progress:
        task = progress.add_task("set-prediction probe", total=len(inputs), rate="")
        for name, read in inputs.items():
            scores = run_probe(read(), raw_targets, classes, train, test, settings)
            rows[name] = {key: value for key, value in scores.items() if not isinstance(value, np.ndarray)}
            progress.update(task, advance=1)
    attributes = slot_set.attributes
    return {
        **records.provenance(),
        "store": str(store.path),
        "slots": slots_name,
        "view": view,
        "slot_set": {"run": attributes["run"]["path"], "run_fingerprint": attributes["run"]["fingerprint"],
                     "weights_sha256": attributes["run"]["weights_sha256"], "store_identity_sha256": attributes["store"]["identity_sha256"],
                     "num_slots": attributes["num_slots"], "slot_dim": attributes["slot_dim"]},
        "protocol": {
            "targets": "class (instance_classes) and box per visible object of the view's instance mask",
            "box_format": BOX_FORMAT,
            "matching": "Hungarian (scipy linear_sum_assignment) on class_weight * CE + box_weight * L1, train and test alike",
            "accuracy": "sklearn accuracy_score over matched held-out objects (argmax over object classes)",
            "box_r2": "sklearn r2_score over matched held-out objects' boxes (4 coordinates, uniform average)",
            "reference": "mean-pooled features: per-image mean feature + one-hot slot index, S inputs per image",
            "settings": settings_record(settings),
            "test_fraction": test_fraction,
        },
        "classes": [int(value) for value in classes],
        "images": {"train": int(len(train)), "test": int(len(test))},
        "rows": rows,
    }


def print_probe_table(record: dict[str, Any]) -> None:
    from rich.table import Table

    from featcache.console import console

    table = Table(title=f"set prediction: slot set {record['slots']!r} of {record['store']} ({record['images']['test']} held-out images)")
    for column in ("input", "accuracy", "box R²", "majority acc.", "objects matched"):
        table.add_column(column, justify="left" if column == "input" else "right")
    for name, row in record["rows"].items():
        table.add_row(name, f"{row['accuracy']:.3f}", f"{row['box_r2']:.3f}", f"{row['majority_accuracy']:.3f}",
                      f"{row['objects_matched']}/{row['objects_total']}")
    console.print(table)


__all__ = [
    "print_probe_table",
    "probe_slot_set",
    "BOX_FORMAT",
    "ObjectTargets",
    "ProbeSettings",
    "SetPredictionProbe",
    "hungarian",
    "mask_boxes",
    "matching_cost",
    "object_targets",
    "pooled_queries",
    "run_probe",
    "score_probe",
    "set_prediction_loss",
    "split_indices",
    "standardise",
    "train_probe",
]
