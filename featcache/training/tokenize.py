"""Tokenizing: a VQ run's token indices for every view written into the store, unit by unit (`featcache tokenize`)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from featcache import records
from featcache.config import to_dict
from featcache.console import format_rate, progress_bar
from featcache.errors import StoreError
from featcache.provenance import utc_now
from featcache.quantize import MSFQuantizer, decoder_input_dim
from featcache.runtime import autocast, resolve_device
from featcache.store import FeatureStore
from featcache.store.lock import WriterLock, token_lock_path
from featcache.store.tokens import (
    CODEBOOK_SPECIFIED,
    PROJECTION_BIAS,
    PROJECTION_WEIGHT,
    create_token_set,
    delete_token_set,
    finish_token_set,
    pending_token_units,
    validate_token_name,
    write_token_unit,
)
from featcache.store.writer import writing
from featcache.training.runs import load_vq_run


@dataclass
class TokenizeSummary:
    store: Path
    name: str
    units_run: int
    units_total: int
    seconds: float
    codebook_size: int


def check_run_fits_store(info: dict, store: FeatureStore, run_dir: Path) -> None:
    """Refuse a VQ run trained on another VFM, feature dimension or grid than the store holds."""
    trained = info["store"]
    if trained["encoder"] != store.attributes["encoder"]["name"] or trained["channels"] != store.layout.channels:
        raise StoreError(
            f"VQ run {run_dir} was trained on {trained['encoder']} features ({trained['channels']} channels); "
            f"store {store.path} holds {store.attributes['encoder']['name']} ({store.layout.channels} channels)"
        )
    if list(trained["grid"]) != list(store.layout.grid):
        raise StoreError(f"VQ run {run_dir} was trained on a {trained['grid']} grid; store {store.path} has {list(store.layout.grid)}")
    if trained["feature_kind"] not in store.feature_kinds:
        raise StoreError(f"VQ run {run_dir} needs {trained['feature_kind']} features, which store {store.path} cannot give")


def tokenize_store(
    store_path: str | Path,
    vq_run: str | Path,
    name: str,
    overwrite: bool = False,
    batch_size: int = 256,
    device: str = "auto",
    show_progress: bool = True,
) -> TokenizeSummary:
    """Tokenize every view of every sample; resumes an unfinished token set made by the same VQ weights.

    The name is checked before anything is read or created; the token set's lock is held from the existence
    check to the last unit, so a second tokenize of the same name fails in one line naming the first. A token set
    whose creation was interrupted (no attributes) is recreated, with or without ``overwrite``.
    """
    validate_token_name(name)
    store_path, vq_run = Path(store_path), Path(vq_run)
    target_device = resolve_device(device)
    store = FeatureStore(store_path)
    store.require_complete()
    model, config, info, weights_sha256 = load_vq_run(vq_run, target_device)
    check_run_fits_store(info, store, vq_run)
    with WriterLock(token_lock_path(store_path, name), f"token set {name!r} of store {store_path}"):
        pending, started = _tokenize_locked(store_path, store, vq_run, name, overwrite, model, config, info, weights_sha256,
                                            batch_size, target_device, show_progress)
    return TokenizeSummary(
        store=store_path,
        name=name,
        units_run=len(pending),
        units_total=store.layout.num_units,
        seconds=time.perf_counter() - started,
        codebook_size=config.quantizer.codebook_size,
    )


def _tokenize_locked(
    store_path: Path,
    store: FeatureStore,
    vq_run: Path,
    name: str,
    overwrite: bool,
    model: Any,
    config: Any,
    info: dict,
    weights_sha256: str,
    batch_size: int,
    target_device: torch.device,
    show_progress: bool,
) -> tuple[list[int], float]:
    """Create (or resume) the token set and write its pending units; returns (units written, start time)."""
    feature_kind = info["store"]["feature_kind"]
    if name in store.token_names():
        existing = store.token_attributes(name)
        same_weights = existing["vq"]["weights_sha256"] == weights_sha256
        if overwrite:
            delete_token_set(store_path, name)
        elif not same_weights:
            raise StoreError(
                f"token set {name!r} in {store_path} was made by another VQ checkpoint ({existing['vq']['run']}); "
                "pass --overwrite to replace it or choose another --name"
            )
        elif existing.get("completed"):
            raise StoreError(f"token set {name!r} in {store_path} is complete; pass --overwrite to rewrite it or choose another --name")
    if name not in FeatureStore(store_path, warn_random=False).token_names():
        codebook, extra_arrays, msf_attributes = token_set_arrays(model.quantizer)
        with writing(store_path, f"the new token set {name!r}"):
            create_token_set(
                store_path,
                name,
                store.layout,
                codebook,
                {
                    "schema_version": 1,
                    "name": name,
                    **records.provenance(),
                    "completed": None,
                    "feature_kind": feature_kind,
                    "vq": {"run": str(vq_run), "weights_sha256": weights_sha256, "config": to_dict(config), "trained_on": info["store"]},
                    "codebook_size": int(codebook.shape[0]),
                    "code_dim": int(codebook.shape[1]),
                    **msf_attributes,
                },
                index_groups=int(msf_attributes.get("index_groups", 0)),
                extra_arrays=extra_arrays,
            )
    pending = pending_token_units(store_path, name)
    layout = store.layout
    started = time.perf_counter()
    with progress_bar(disable=not show_progress) as progress:
        task = progress.add_task(f"tokenize {name}", total=len(pending), rate="")
        done_samples = 0
        for unit in pending:
            start, stop = layout.unit_range(unit)
            features = store.features(slice(start, stop), view=None)  # (n, V, h, w, C) float16, stored kind
            count, views = features.shape[:2]
            flat = torch.from_numpy(features.reshape(count * views, *features.shape[2:]))  # (n*V, h, w, C)
            indices, errors = [], []
            for begin in range(0, flat.shape[0], batch_size):
                chunk = flat[begin : begin + batch_size].to(target_device).float()
                if feature_kind != store.stored_kind:
                    chunk = store.derive(chunk, feature_kind)
                with autocast(target_device):
                    chunk_indices, chunk_errors = model.tokenize(chunk)
                indices.append(chunk_indices.cpu())
                errors.append(chunk_errors.float().cpu())
            shape = (count, views, *layout.grid)
            all_indices = torch.cat(indices).numpy()  # (n*V, h, w) or, MSF, (n*V, G, h, w)
            with writing(store_path, f"unit {unit} of token set {name!r}"):
                write_token_unit(
                    store_path, name, start, all_indices.reshape(count, views, *all_indices.shape[1:]), torch.cat(errors).numpy().reshape(shape), unit
                )
            done_samples += count
            progress.update(task, advance=1, rate=format_rate(done_samples, time.perf_counter() - started, "samples"))
    if not pending_token_units(store_path, name):
        with writing(store_path, f"the completion attributes of token set {name!r}"):
            finish_token_set(store_path, name, utc_now())
    return pending, started


@torch.no_grad()
def token_set_arrays(quantizer: torch.nn.Module) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, Any]]:
    """(codebook (K, d), further arrays, further attributes) a quantizer's token set stores.

    VVO: the projected codebook alone. MSF: the shared codebook as ``codebook``, level 0's specified one as
    ``codebook_specified``, the projection when there is one, and the attributes naming the layout
    (``quantizer: msf``, ``index_groups``, ``combine``, ``codebook_sizes``, ``decoder_dim``, ``scale``).
    """
    if not isinstance(quantizer, MSFQuantizer):
        return quantizer.codebook.codes().float().cpu().numpy(), {}, {}  # type: ignore[operator,union-attr]
    config = quantizer.config
    shared = quantizer.shared.codes().float().cpu().numpy()  # (K, d)
    arrays: dict[str, np.ndarray] = {}
    if config.specified_codebooks:
        arrays[CODEBOOK_SPECIFIED] = quantizer.specified[0].codes().float().cpu().numpy()  # (K0, d)
    if quantizer.projection is not None:
        arrays[PROJECTION_WEIGHT] = quantizer.projection.weight.float().cpu().numpy()  # (E, D)
        arrays[PROJECTION_BIAS] = quantizer.projection.bias.float().cpu().numpy()  # (E,)
    sizes = [int(shared.shape[0])] + ([int(arrays[CODEBOOK_SPECIFIED].shape[0])] if config.specified_codebooks else [])
    attributes = {
        "quantizer": "msf",
        "scale": 0,
        "index_groups": len(sizes),
        "codebook_names": ["shared", "specified"][: len(sizes)],
        "codebook_sizes": sizes,
        "combine": config.combine,
        "decoder_dim": decoder_input_dim(config),
    }
    return shared, arrays, attributes


__all__ = ["TokenizeSummary", "check_run_fits_store", "token_set_arrays", "tokenize_store"]
