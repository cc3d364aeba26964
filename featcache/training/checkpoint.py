"""Run folders: safetensors weights + the resolved config + provenance, and the state to resume from.

A run folder holds
  config.yaml        the one resolved config of the run (the single source of truth for later stages)
  run.json           provenance: the store's identity and weights, versions, step, checksums
  model.safetensors  the model weights of the latest checkpoint
  train_state.pt     optimizer, step and random-generator states, for --resume
  metrics.jsonl/csv  the metrics log
  .featcache-run     written when a run starts in the folder: its metrics files are featcache's to replace

A checkpoint is one unit (weights, train state, config, run.json), saved in three phases so that a kill or a full
disk at any point leaves one complete checkpoint:

1. stage: every file is written beside its current one as ``<name>.next`` (fsync'd); run.json records the step
   and the sha256 of each staged file. A failure here removes the staged files: the previous checkpoint is untouched.
2. commit: ``checkpoint.next.json`` (the journal: step, sha256 of each staged file, and the run folders saved
   together) is written atomically. Fused seeds write one journal per run folder; the group is committed once
   every member has its journal (or has already moved on to the step).
3. apply: each ``<name>.next`` is renamed over ``<name>``, then the journal is removed.

A journal left by a kill in phase 3 is rolled forward (each staged file's sha256 checked first) before anything
reads the folder; staged files without a committed journal are discarded by the next writer. On ``--resume``
the files are checked against run.json (same step, same checksums, the metrics log holding the rows the
checkpoint recorded) so a torn pair is refused in one line, never resumed silently.
"""

from __future__ import annotations

import errno as errno_codes
import hashlib
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes

from featcache import records
from featcache.config import flatten_keys, from_dict, to_dict
from featcache.errors import ConfigError, FeatcacheError
from featcache.provenance import file_sha256, utc_now
from featcache.store.lock import WriterLock

CONFIG_NAME = "config.yaml"
RUN_NAME = "run.json"
WEIGHTS_NAME = "model.safetensors"
STATE_NAME = "train_state.pt"
METRICS_NAME = "metrics.jsonl"
JOURNAL_NAME = "checkpoint.next.json"
MARKER_NAME = ".featcache-run"
STAGED_SUFFIX = ".next"
#: The files of one checkpoint, in the order they are staged and applied (run.json last).
UNIT_NAMES = (WEIGHTS_NAME, STATE_NAME, CONFIG_NAME, RUN_NAME)
#: Files a run writes over: a fresh run into a folder holding one of them that no run started in is refused.
RUN_FILE_NAMES = (*UNIT_NAMES, METRICS_NAME, "metrics.csv", "reconstructions.png")


@dataclass
class Checkpoint:
    """One run folder's checkpoint to save: its model, resolved config, provenance and resumable state."""

    run_dir: Path
    model: torch.nn.Module
    config: dict[str, Any]
    run_info: dict[str, Any]
    train_state: dict[str, Any]


def _write_file(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` and fsync it (the one place checkpoint bytes reach the disk)."""
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    """Make the renames in ``path`` durable (a no-op where directories cannot be opened)."""
    try:
        handle = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)


def _staged(run_dir: Path, name: str) -> Path:
    return run_dir / (name + STAGED_SUFFIX)


def _stage(unit: Checkpoint) -> dict[str, str]:
    """Phase 1 for one run folder: write every file as ``<name>.next``; returns name -> sha256."""
    run_dir = unit.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    weights = {name: tensor.detach().contiguous().cpu() for name, tensor in unit.model.state_dict().items()}
    state = io.BytesIO()
    torch.save(unit.train_state, state)
    contents = {
        WEIGHTS_NAME: safetensors_bytes(weights),
        STATE_NAME: state.getvalue(),
        CONFIG_NAME: yaml.safe_dump(unit.config, sort_keys=False).encode(),
    }
    checksums = {name: hashlib.sha256(data).hexdigest() for name, data in contents.items()}
    info = {
        **unit.run_info,
        "weights_sha256": checksums[WEIGHTS_NAME],
        "checkpoint": {"step": unit.run_info.get("step"), "sha256": dict(checksums)},
    }
    contents[RUN_NAME] = (json.dumps(info, indent=2, default=records._json_default) + "\n").encode()
    checksums[RUN_NAME] = hashlib.sha256(contents[RUN_NAME]).hexdigest()
    for name in UNIT_NAMES:
        path = _staged(run_dir, name)
        try:
            _write_file(path, contents[name])
        except OSError as error:
            error.filename = error.filename or str(path)  # a failed write() names no file
            raise
    return checksums


def _write_journal(run_dir: Path, journal: dict[str, Any]) -> None:
    """Phase 2: the commit point of ``run_dir``'s checkpoint (written to a temporary file, fsync'd, renamed)."""
    temporary = run_dir / (JOURNAL_NAME + ".tmp")
    try:
        _write_file(temporary, (json.dumps(journal, indent=2) + "\n").encode())
    except OSError as error:
        error.filename = error.filename or str(temporary)
        raise
    os.replace(temporary, run_dir / JOURNAL_NAME)
    _fsync_dir(run_dir)


def _apply(run_dir: Path, journal: dict[str, Any], verify: bool) -> None:
    """Phase 3: rename each staged file over its current one, then remove the journal. ``verify`` (recovery) checks
    each staged file's sha256 against the journal first; a file renamed already is checked in place."""
    for name in UNIT_NAMES:
        expected = journal["files"][name]
        staged, final = _staged(run_dir, name), run_dir / name
        if staged.is_file():
            if verify and file_sha256(staged) != expected:
                raise FeatcacheError(
                    f"run folder {run_dir}: the staged {staged.name} of the step-{journal['step']} checkpoint does not match "
                    f"{JOURNAL_NAME}; the checkpoint cannot be completed — move the folder aside and start a new --out"
                )
            os.replace(staged, final)
        elif not (final.is_file() and file_sha256(final) == expected):
            raise FeatcacheError(
                f"run folder {run_dir}: {JOURNAL_NAME} names {staged.name}, which is missing, and {name} is not the file it "
                "records; the checkpoint cannot be completed — move the folder aside and start a new --out"
            )
    _fsync_dir(run_dir)
    (run_dir / JOURNAL_NAME).unlink(missing_ok=True)


def _discard_staged(run_dir: Path) -> None:
    """Remove an uncommitted checkpoint's staged files and journal (the previous checkpoint stays as it was)."""
    for name in (*UNIT_NAMES, JOURNAL_NAME):
        _staged(run_dir, name).unlink(missing_ok=True)
        (run_dir / (name + ".tmp")).unlink(missing_ok=True)
    (run_dir / JOURNAL_NAME).unlink(missing_ok=True)


def _read_journal(run_dir: Path) -> dict[str, Any] | None:
    """The committed journal of ``run_dir`` (it is renamed into place whole, so it is either there or not)."""
    path = run_dir / JOURNAL_NAME
    if not path.is_file():
        return None
    try:
        journal = json.loads(path.read_text())
        if not isinstance(journal, dict) or set(journal.get("files", {})) != set(UNIT_NAMES):
            raise ValueError("not a checkpoint journal")
    except (ValueError, UnicodeDecodeError) as error:
        raise FeatcacheError(f"{path} is not a checkpoint journal ({str(error).splitlines()[0]}); move the folder aside and start a new --out") from None
    return journal


def _recorded_step(run_dir: Path) -> int | None:
    """The step run.json records, or None (no run.json, or one that does not say)."""
    record = records.read_record(run_dir / RUN_NAME, invalid="absent")
    step = record.get("step") if record else None
    return int(step) if isinstance(step, int) else None


def _group_committed(run_dir: Path, journal: dict[str, Any]) -> bool:
    """Whether every run folder saved with ``run_dir`` (fused seeds) reached the commit point of this step."""
    for member in journal.get("group") or []:
        member_dir = Path(member)
        if member_dir.resolve() == run_dir.resolve():
            continue
        other = _read_journal(member_dir) if member_dir.is_dir() else None
        if not ((other is not None and other.get("step") == journal["step"]) or _recorded_step(member_dir) == journal["step"]):
            return False
    return True


def recover_checkpoint(run_dir: Path, writer: bool = False) -> None:
    """Finish a checkpoint a kill interrupted after its commit (roll forward, checksums checked). ``writer`` (the
    process about to train in ``run_dir``) also discards an uncommitted one's staged files; a reader leaves those
    to the writer, which may still be staging them."""
    run_dir = Path(run_dir)
    try:
        journal = _read_journal(run_dir)
        if journal is not None and _group_committed(run_dir, journal):
            _apply(run_dir, journal, verify=True)
        elif writer:
            _discard_staged(run_dir)
    except OSError as error:
        raise FeatcacheError(f"cannot complete the interrupted checkpoint in {run_dir}: {error.strerror or error}") from None


def save_checkpoints(units: list[Checkpoint]) -> None:
    """Save each run folder's checkpoint as one unit (stage all, commit all, apply all; see the module docstring).

    An OSError (a full disk) while staging or committing removes what was staged and raises a one-line
    FeatcacheError naming the file: every run folder keeps its previous checkpoint."""
    group = [str(unit.run_dir.resolve()) for unit in units] if len(units) > 1 else []
    previous = {unit.run_dir: _recorded_step(unit.run_dir) for unit in units}
    current = units[0].run_dir
    try:
        staged = []
        for unit in units:
            current = unit.run_dir
            staged.append(_stage(unit))
        for unit, checksums in zip(units, staged):
            current = unit.run_dir
            _write_journal(unit.run_dir, {"step": unit.run_info.get("step"), "files": checksums, "group": group, "created": utc_now()})
    except BaseException as error:
        for unit in units:
            _discard_staged(unit.run_dir)
        if not isinstance(error, OSError):
            raise
        where = Path(error.filename) if error.filename else current
        step = units[0].run_info.get("step")
        kept = previous[current]
        kept_text = f"its checkpoint of step {kept} is intact" if kept is not None else "it holds no earlier checkpoint"
        reason = error.strerror or str(error)
        hint = "free space, then --resume" if error.errno == errno_codes.ENOSPC else "fix that, then --resume"
        raise FeatcacheError(f"cannot save the step-{step} checkpoint to {where}: {reason}; {current}: {kept_text} ({hint})") from None
    for unit in units:
        journal = _read_journal(unit.run_dir)
        assert journal is not None
        _apply(unit.run_dir, journal, verify=False)


def save_checkpoint(
    run_dir: Path, model: torch.nn.Module, config: dict[str, Any], run_info: dict[str, Any], train_state: dict[str, Any]
) -> None:
    """Save weights, config, provenance and resumable state of one run folder as one unit."""
    save_checkpoints([Checkpoint(Path(run_dir), model, config, run_info, train_state)])


def read_run(run_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(config dict, run info) of a run folder, with one-line errors for missing pieces."""
    run_dir = Path(run_dir)
    recover_checkpoint(run_dir)
    for name in (CONFIG_NAME, RUN_NAME, WEIGHTS_NAME):
        if not (run_dir / name).is_file():
            raise FeatcacheError(f"run folder {run_dir} has no {name}; expected a folder written by featcache training")
    try:
        config = yaml.safe_load((run_dir / CONFIG_NAME).read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise FeatcacheError(f"{run_dir / CONFIG_NAME} is not valid YAML ({str(error).splitlines()[0]})") from None
    info = records.read_record(run_dir / RUN_NAME)
    assert info is not None
    return config, info


def load_weights(run_dir: Path, model: torch.nn.Module) -> str:
    """Load the run's weights into ``model`` strictly; returns the weights file's sha256."""
    path = Path(run_dir) / WEIGHTS_NAME
    sha256 = file_sha256(path)
    info = records.read_record(Path(run_dir) / RUN_NAME) or {}
    recorded = info.get("weights_sha256")
    if recorded and recorded != sha256:
        raise FeatcacheError(
            f"{path} is not the weights {RUN_NAME} records (sha256 {sha256[:12]}..., recorded {recorded[:12]}...): the file was damaged "
            "or replaced; restore the run folder from a copy or train again"
        )
    try:
        state = load_file(str(path))
    except Exception as error:  # safetensors raises its own error types for a damaged file
        raise FeatcacheError(f"{path} is not a readable safetensors file ({str(error).splitlines()[0]}); restore the run folder or train again") from None
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as error:  # shape mismatches: the config no longer describes these weights
        first = next((line.strip() for line in str(error).splitlines() if "size mismatch" in line), str(error).splitlines()[0])
        raise FeatcacheError(f"{path} does not fit the model of its {CONFIG_NAME} (was it edited?): {first}") from None
    if missing or unexpected:
        raise FeatcacheError(
            f"{path} does not fit the model of its config.yaml: missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]}"
        )
    return sha256


def _torn(run_dir: Path, what: str) -> FeatcacheError:
    return FeatcacheError(
        f"cannot resume {run_dir}: {what}; the checkpoint is torn and no complete one is kept — start a new --out "
        "(or restore the folder from a copy)"
    )


def verify_checkpoint(run_dir: Path, info: dict[str, Any]) -> None:
    """One-line error unless the weights, train state and metrics log of ``run_dir`` are those its run.json
    records (same step, same checksums). Run folders from before checkpoints recorded every checksum are checked on
    what they record (the weights' sha256 and the step)."""
    recorded = (info.get("checkpoint") or {}).get("sha256") or {WEIGHTS_NAME: info.get("weights_sha256")}
    # config.yaml is compared by meaning (check_resume_config): a folder's config may be rewritten in an older layout.
    for name in (WEIGHTS_NAME, STATE_NAME):
        expected = recorded.get(name)
        if expected is None:
            continue
        path = run_dir / name
        if not path.is_file():
            raise _torn(run_dir, f"{name} is missing")
        actual = file_sha256(path)
        if actual != expected:
            raise _torn(run_dir, f"{name} (sha256 {actual[:12]}) is not the one run.json records for step {info.get('step')} ({expected[:12]})")
    step = info.get("step")
    expected_rows = info.get("metrics_rows")
    if expected_rows is not None and step is not None:
        from featcache.training.metrics_log import MetricsLog

        path = run_dir / METRICS_NAME
        rows = [row for row in MetricsLog.read(path) if row["step"] <= int(step)] if path.is_file() else []
        if len(rows) != int(expected_rows):
            raise FeatcacheError(
                f"cannot resume {run_dir}: {METRICS_NAME} holds {len(rows)} rows up to step {step}, its checkpoint recorded "
                f"{expected_rows}; restore the run's metrics log or start a new --out"
            )


def load_train_state(run_dir: Path) -> dict[str, Any]:
    """The train state to resume ``run_dir`` from, after checking it belongs with the folder's other files."""
    run_dir = Path(run_dir)
    path = run_dir / STATE_NAME
    if not path.is_file():
        raise FeatcacheError(f"cannot resume: {path} does not exist")
    _, info = read_run(run_dir)
    verify_checkpoint(run_dir, info)
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # noqa: BLE001 - any unreadable pickle is a damaged file
        raise _torn(run_dir, f"{STATE_NAME} cannot be read ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})") from None
    if not isinstance(state, dict):
        raise _torn(run_dir, f"{STATE_NAME} holds no train state")
    if "imported_from" in state:
        raise FeatcacheError(f"cannot resume {run_dir}: it was imported from {state['imported_from']['path']} and holds no optimizer state")
    step = info.get("step")
    if step is not None and state.get("step") != step:
        raise _torn(run_dir, f"{STATE_NAME} is at step {state.get('step')} but run.json at step {step}")
    return state


def _describe_inputs(summary: dict[str, Any], tokens: dict[str, Any] | None) -> str:
    identity = summary.get("identity")
    text = (
        f"store {summary.get('path')} (identity {records.fingerprint(identity)[:12] if identity is not None else '?'}, "
        f"{summary.get('encoder')}, {summary.get('channels')} ch, grid {list(summary.get('grid') or [])}, {summary.get('feature_kind')})"
    )
    if tokens:
        text += f" with tokens from VQ weights {str((tokens.get('vq') or {}).get('weights_sha256'))[:12]}"
    return text


def check_resume_inputs(run_dir: Path, run_info: dict[str, Any]) -> None:
    """``--resume`` continues the same run on the same inputs: a store of another identity, grid, channels or feature
    kind, or tokens made by other VQ weights, is refused naming the run's inputs and the given ones. Checked before
    any weights are loaded."""
    run_dir = Path(run_dir)
    _, saved = read_run(run_dir)
    saved_store, store = saved.get("store") or {}, run_info.get("store") or {}
    keys = ("identity", "channels", "grid", "feature_kind")
    same_store = all(_comparable(saved_store.get(key)) == _comparable(store.get(key)) for key in keys)

    def vq_sha(tokens: dict[str, Any] | None) -> Any:
        return ((tokens or {}).get("vq") or {}).get("weights_sha256")

    same_tokens = vq_sha(saved.get("tokens")) == vq_sha(run_info.get("tokens"))
    saved_teacher = (saved.get("teacher") or {}).get("weights_sha256")
    teacher = (run_info.get("teacher") or {}).get("weights_sha256")
    if saved_teacher != teacher:  # SPOT self-training: the teacher's weights are an input too
        raise FeatcacheError(
            f"cannot --resume {run_dir}: it was distilled from teacher weights sha256 {str(saved_teacher)[:12]}..., "
            f"the teacher given now has {str(teacher)[:12]}...; resume with the run's teacher or start a new --out"
        )
    if not (same_store and same_tokens):
        raise FeatcacheError(
            f"cannot --resume {run_dir}: it was trained on {_describe_inputs(saved_store, saved.get('tokens'))}, not on "
            f"{_describe_inputs(store, run_info.get('tokens'))}; resume with the run's store or start a new --out"
        )


def _comparable(value: Any) -> Any:
    """Lists and tuples alike (run.json stores grids as lists)."""
    return list(value) if isinstance(value, tuple) else value


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


def holds_checkpoint(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a checkpoint (saved, or committed and not yet applied)."""
    return (Path(run_dir) / CONFIG_NAME).is_file() or (Path(run_dir) / JOURNAL_NAME).is_file()


def prepare_run_folder(run_dir: Path, config: Any, resume: bool) -> None:
    """Make ``run_dir`` ready to train in. Resuming: finish an interrupted checkpoint, then the config (a dataclass)
    must be the saved one. Starting: refuse a folder that holds a run, or files a run would write over (metrics.jsonl,
    ...) that no featcache run started there wrote; then mark the folder as this run's."""
    run_dir = Path(run_dir)
    for folder in (run_dir.resolve(), *run_dir.resolve().parents):
        if any((folder / name).is_file() for name in ("zarr.json", ".zgroup", ".zarray")):
            raise FeatcacheError(f"--out {run_dir} is {'' if folder == run_dir.resolve() else 'inside '}the zarr store {folder}; a run folder "
                                 "must lie outside stores (training would write into the store)")
    if run_dir.is_dir():
        recover_checkpoint(run_dir, writer=True)
    if resume:
        check_resume_config(run_dir, config)
        return
    if (run_dir / CONFIG_NAME).exists():
        raise FeatcacheError(f"run folder {run_dir} already holds a run; pass --resume to continue it or choose another --out")
    if not (run_dir / MARKER_NAME).is_file():
        foreign = [name for name in RUN_FILE_NAMES if (run_dir / name).exists()]
        if foreign:
            raise FeatcacheError(
                f"--out {run_dir} holds {foreign[0]}, which no featcache run started there wrote; training would replace it — "
                "choose an empty or new --out, or move the file away"
            )
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        records.write_record(run_dir / MARKER_NAME, {"featcache_run": True, "started": utc_now()})
    except OSError as error:
        raise FeatcacheError(f"cannot start a run in {run_dir}: {error.strerror or error}") from None


def run_lock(run_dir: Path) -> WriterLock:
    """The writer lock of a run folder (``<run>.lock`` beside it): a second training into the same ``--out`` fails in
    one line naming the first; a lock left by a killed run is taken over, so ``--resume`` always works."""
    run_dir = Path(run_dir).resolve()
    return WriterLock(run_dir.with_name(run_dir.name + ".lock"), f"run folder {run_dir}")
