"""Encoding slots: a trained OCL run's slots and masks for every sample written into the store, unit by unit
(`featcache encode-slots`; the layout is in :mod:`featcache.store.slots`).

Same design as tokenizing (featcache.training.tokenize): the set's lock is held from the existence check to the
last unit, a unit is marked done only after its arrays are written, and a second run with the same weights resumes
the pending units; other weights are refused unless ``overwrite``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from featcache import records
from featcache.config import to_dict
from featcache.console import format_rate, progress_bar
from featcache.errors import FeatcacheError, StoreError
from featcache.ocl import OCLModel
from featcache.provenance import file_sha256, utc_now
from featcache.runtime import resolve_device
from featcache.store import FeatureStore
from featcache.store.lock import WriterLock, slot_lock_path
from featcache.store.slots import (
    SlotSet,
    create_slot_set,
    delete_slot_set,
    finish_slot_set,
    pending_slot_units,
    slot_names,
    validate_slot_name,
    write_slot_unit,
)
from featcache.store.writer import writing
from featcache.training.checkpoint import WEIGHTS_NAME, read_run
from featcache.training.runs import evaluation_generator, load_ocl_run

#: Which views ``--views`` encodes.
VIEW_CHOICES = ("center", "all")


@dataclass
class EncodeSlotsSummary:
    store: Path
    name: str
    units_run: int
    units_total: int
    seconds: float
    num_slots: int
    views: list[str]


@torch.no_grad()
def encode_batch(
    model: OCLModel, features: torch.Tensor, tokens: torch.Tensor | None, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """features (B, h, w, C) -> slots (B, S, D), attention masks (B, S, h, w), decoder masks (B, S, h, w) or None.

    The model's own forward in eval mode, with evaluation noise drawn from ``generator`` (as `featcache eval`)."""
    was_training = model.training
    model.eval()
    try:
        output = model(features, tokens, model.draw_noise(features.shape[0], generator, features.device))
    finally:
        model.train(was_training)
    decoder_masks = output.decoder_masks.float() if output.decoder_masks is not None else None
    return output.slots.float(), output.attention_masks.float(), decoder_masks


def selected_views(store: FeatureStore, views: str) -> list[str]:
    if views not in VIEW_CHOICES:
        raise FeatcacheError(f"views is {views!r}; expected one of {', '.join(VIEW_CHOICES)}")
    if views == "all":
        return list(store.view_names)
    if "center" not in store.view_names:
        raise StoreError(f"store {store.path} has no 'center' view (views: {', '.join(store.view_names)}); pass --views all")
    return ["center"]


def run_identity(run_dir: Path) -> tuple[str, str]:
    """(run fingerprint, weights sha256): the fingerprint covers the run's config and the inputs it was trained on."""
    raw_config, info = read_run(run_dir)
    fingerprint = records.fingerprint({"config": raw_config, "store": info.get("store"), "tokens": info.get("tokens")})
    return fingerprint, info.get("weights_sha256") or file_sha256(run_dir / WEIGHTS_NAME)


def encode_slots(
    run_dir: str | Path,
    store_path: str | Path,
    name: str,
    views: str = "center",
    dtype: str = "float32",
    overwrite: bool = False,
    batch_size: int = 64,
    device: str = "auto",
    show_progress: bool = True,
) -> EncodeSlotsSummary:
    """Write the run's slots and masks for ``views`` of every sample into ``slots/<name>`` of the store; resumes an
    unfinished set made by the same weights."""
    validate_slot_name(name)
    run_dir, store_path = Path(run_dir), Path(store_path)
    target_device = resolve_device(device)
    store = FeatureStore(store_path)
    store.require_complete()
    model, config, info = load_ocl_run(run_dir, store, target_device)
    if config.tokens:
        store.require_token_set(config.tokens)
    view_names = selected_views(store, views)
    fingerprint, weights_sha256 = run_identity(run_dir)
    started = time.perf_counter()
    with WriterLock(slot_lock_path(store_path, name), f"slot set {name!r} of store {store_path}"):
        if name in slot_names(store.group):
            existing = SlotSet(store, name).attributes
            if overwrite:
                with writing(store_path, f"the old slot set {name!r}"):
                    delete_slot_set(store_path, name)
            elif existing["run"]["weights_sha256"] != weights_sha256 or existing["views"] != view_names or existing["dtype"] != dtype:
                raise StoreError(
                    f"slot set {name!r} in {store_path} was made by other weights, views or dtype (run {existing['run']['path']}, "
                    f"views {', '.join(existing['views'])}, {existing['dtype']}); pass --overwrite to replace it or choose another --name"
                )
            elif existing.get("completed"):
                raise StoreError(f"slot set {name!r} in {store_path} is complete; pass --overwrite to rewrite it or choose another --name")
        if name not in slot_names(FeatureStore(store_path, warn_random=False).group):
            aggregator = config.model.aggregator
            with writing(store_path, f"the new slot set {name!r}"):
                create_slot_set(
                    store_path, name, store.layout, len(view_names), aggregator.num_slots, aggregator.slot_dim, dtype,
                    bool(getattr(model.decoder, "returns_masks", False)),
                    {
                        "schema_version": 1,
                        "name": name,
                        **records.provenance(),
                        "completed": None,
                        "views": view_names,
                        "num_slots": aggregator.num_slots,
                        "slot_dim": aggregator.slot_dim,
                        "dtype": dtype,
                        "mask_source": config.model.mask_source,
                        "feature_kind": info["store"]["feature_kind"],
                        "run": {"path": str(run_dir), "fingerprint": fingerprint, "weights_sha256": weights_sha256, "config": to_dict(config)},
                        "store": {"path": str(store_path), "identity_sha256": records.fingerprint(store.attributes["identity"])},
                    },
                )
        pending = pending_slot_units(store_path, name)
        _encode_units(store, store_path, name, model, config.tokens or None, info["store"]["feature_kind"], view_names, pending,
                      batch_size, target_device, show_progress)
        if not pending_slot_units(store_path, name):
            with writing(store_path, f"the completion attributes of slot set {name!r}"):
                finish_slot_set(store_path, name, utc_now())
    return EncodeSlotsSummary(store_path, name, len(pending), store.layout.num_units, time.perf_counter() - started,
                              config.model.aggregator.num_slots, view_names)


def _encode_units(
    store: FeatureStore, store_path: Path, name: str, model: OCLModel, token_name: str | None, feature_kind: str, view_names: list[str],
    pending: list[int], batch_size: int, device: torch.device, show_progress: bool,
) -> None:
    """Encode and write each pending unit (each unit's noise from a fresh evaluation generator: resumable alike)."""
    layout = store.layout
    started = time.perf_counter()
    with progress_bar(disable=not show_progress) as progress:
        task = progress.add_task(f"encode-slots {name}", total=len(pending), rate="")
        done_samples = 0
        for unit in pending:
            start, stop = layout.unit_range(unit)
            generator = evaluation_generator(device)
            outputs: dict[str, list[np.ndarray]] = {"slots": [], "attention": [], "decoder": []}
            for view in view_names:
                per_view: dict[str, list[np.ndarray]] = {"slots": [], "attention": [], "decoder": []}
                for begin in range(start, stop, batch_size):
                    rows = slice(begin, min(begin + batch_size, stop))
                    features = torch.from_numpy(store.features(rows, view=view).astype(np.float32)).to(device)  # (b, h, w, C)
                    if feature_kind != store.stored_kind:
                        features = store.derive(features, feature_kind)
                    tokens = torch.from_numpy(store.tokens(token_name, rows, view=view).astype(np.int64)).to(device) if token_name else None
                    slots, attention, decoder = encode_batch(model, features, tokens, generator)
                    per_view["slots"].append(slots.cpu().numpy())
                    per_view["attention"].append(attention.cpu().numpy())
                    if decoder is not None:
                        per_view["decoder"].append(decoder.cpu().numpy())
                for key, values in per_view.items():
                    if values:
                        outputs[key].append(np.concatenate(values))
            stacked = {key: np.stack(values, axis=1) if values else None for key, values in outputs.items()}  # (n, V, ...)
            with writing(store_path, f"unit {unit} of slot set {name!r}"):
                write_slot_unit(store_path, name, start, unit, stacked["slots"], stacked["attention"], stacked["decoder"])  # type: ignore[arg-type]
            done_samples += stop - start
            progress.update(task, advance=1, rate=format_rate(done_samples, time.perf_counter() - started, "samples"))


__all__ = ["EncodeSlotsSummary", "VIEW_CHOICES", "encode_batch", "encode_slots", "run_identity", "selected_views"]
