"""Run folders: safetensors weights + the resolved config + provenance, and the state to resume from.

A run folder holds
  config.yaml        the one resolved config of the run (the single source of truth for later stages)
  run.json           provenance: the store's identity and weights, versions, step, checksums
  model.safetensors  the model weights of the latest checkpoint
  train_state.pt     optimizer, step and random-generator states, for --resume
  metrics.jsonl/csv  the metrics log
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import load_file, save_file

from featcache import records
from featcache.config import flatten_keys, from_dict, to_dict
from featcache.errors import ConfigError, FeatcacheError
from featcache.provenance import file_sha256

CONFIG_NAME = "config.yaml"
RUN_NAME = "run.json"
WEIGHTS_NAME = "model.safetensors"
STATE_NAME = "train_state.pt"


def _atomic_write(path: Path, write: Any) -> None:
    """Write via a temporary file and rename, so a crash never leaves a half-written checkpoint."""
    temporary = path.with_name(path.name + ".tmp")
    write(temporary)
    os.replace(temporary, path)


def save_checkpoint(
    run_dir: Path, model: torch.nn.Module, config: dict[str, Any], run_info: dict[str, Any], train_state: dict[str, Any]
) -> None:
    """Save weights, config, provenance and resumable state (each file replaced atomically)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    weights = {name: tensor.detach().contiguous().cpu() for name, tensor in model.state_dict().items()}
    _atomic_write(run_dir / WEIGHTS_NAME, lambda path: save_file(weights, str(path)))
    _atomic_write(run_dir / STATE_NAME, lambda path: torch.save(train_state, path))
    _atomic_write(run_dir / CONFIG_NAME, lambda path: path.write_text(yaml.safe_dump(config, sort_keys=False)))
    info = {**run_info, "weights_sha256": file_sha256(run_dir / WEIGHTS_NAME)}
    records.write_record(run_dir / RUN_NAME, info)


def read_run(run_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(config dict, run info) of a run folder, with one-line errors for missing pieces."""
    run_dir = Path(run_dir)
    for name in (CONFIG_NAME, RUN_NAME, WEIGHTS_NAME):
        if not (run_dir / name).is_file():
            raise FeatcacheError(f"run folder {run_dir} has no {name}; expected a folder written by featcache training")
    config = yaml.safe_load((run_dir / CONFIG_NAME).read_text())
    info = json.loads((run_dir / RUN_NAME).read_text())
    return config, info


def load_weights(run_dir: Path, model: torch.nn.Module) -> str:
    """Load the run's weights into ``model`` strictly; returns the weights file's sha256."""
    path = Path(run_dir) / WEIGHTS_NAME
    state = load_file(str(path))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise FeatcacheError(
            f"{path} does not fit the model of its config.yaml: missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]}"
        )
    return file_sha256(path)


def load_train_state(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / STATE_NAME
    if not path.is_file():
        raise FeatcacheError(f"cannot resume: {path} does not exist")
    state = torch.load(path, map_location="cpu", weights_only=False)
    if "imported_from" in state:
        raise FeatcacheError(f"cannot resume {run_dir}: it was imported from {state['imported_from']['path']} and holds no optimizer state")
    return state


def check_resume_config(run_dir: Path, config: Any) -> None:
    """``--resume`` continues the same run: a config (dataclass) that differs from the saved one is refused, naming
    the keys. The saved config is read as ``from_dict`` reads it, so a run folder written before a key moved or a
    field was added resumes with the config it means."""
    saved, _ = read_run(run_dir)
    try:
        saved_keys = flatten_keys(to_dict(from_dict(type(config), saved)))
    except ConfigError as error:
        raise ConfigError(f"--resume: {run_dir / CONFIG_NAME} is not a {type(config).__name__}: {error}") from None
    keys = flatten_keys(to_dict(config))
    differences = [f"{key}: {saved_keys.get(key)!r} -> {value!r}" for key, value in keys.items() if saved_keys.get(key) != value]
    if differences:
        raise ConfigError(f"--resume with a config that differs from {run_dir / CONFIG_NAME}: {'; '.join(differences)}")


def prepare_run_folder(run_dir: Path, config: Any, resume: bool) -> None:
    """Refuse to overwrite a run unless resuming it; when resuming, the config (a dataclass) must be the saved one."""
    if resume:
        check_resume_config(run_dir, config)
    elif (run_dir / CONFIG_NAME).exists():
        raise FeatcacheError(f"run folder {run_dir} already holds a run; pass --resume to continue it or choose another --out")
