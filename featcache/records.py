"""The run record: fingerprints, provenance, record files, moving outdated outputs aside, and the done/skip decision.

Every incremental part of featcache (pipeline stages, sweep runs, training runs, evaluations) decides
"is this output current?" the same way, with this module:

* a **fingerprint** is the sha256 of the canonical JSON of what an output depends on (:func:`fingerprint`);
* a **record** is a JSON file written atomically next to (or inside) the output (:func:`write_record`), with a
  provenance block (:func:`provenance`: time and library versions); a torn or hand-broken record is a one-line
  error naming the file, or reads as absent where the caller can redo the work (:func:`read_record`);
* an output made from other inputs is **moved aside**, never deleted, to ``<name>.replaced-<time>`` with a
  ``REPLACED.txt`` saying why (:func:`move_aside`);
* :func:`decide` says ``done`` / ``resume`` / ``run`` (and why) from a record, the current fingerprint and
  whether the outputs exist.

It sits at the bottom of the package (only :mod:`featcache.provenance` below it), so the store, training,
pipelines and sweeps all use it.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from featcache.errors import FeatcacheError
from featcache.provenance import data_sha256, library_versions, utc_now

#: Suffix of outputs set aside because they were made from other inputs: ``<name>.replaced-<YYYYmmdd-HHMMSS>``.
REPLACED_SUFFIX = ".replaced-"
REPLACED_NOTE = "REPLACED.txt"

Decision = Literal["done", "run", "resume"]


def fingerprint(data: Any) -> str:
    """sha256 of ``data``'s canonical JSON: equal for equal contents, whatever the key order."""
    return data_sha256(data)


def provenance(**extra: Any) -> dict[str, Any]:
    """The provenance block of a record: when, with which library versions (plus ``extra``)."""
    return {"created": utc_now(), "versions": library_versions(), **extra}


def write_record(path: str | Path, record: dict[str, Any]) -> Path:
    """Write ``record`` as JSON atomically (a temporary file renamed over ``path``): a kill leaves the old or the new."""
    path = Path(path)
    temporary = path.with_name(path.name + ".tmp")
    text = json.dumps(record, indent=2, default=_json_default) + "\n"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary.write_text(text)
        os.replace(temporary, path)
    except OSError as error:  # a full disk, a read-only folder: the old record (if any) is still whole
        if temporary.parent.is_dir():
            temporary.unlink(missing_ok=True)
        raise FeatcacheError(f"cannot write {path}: {error.strerror or error}; free space or fix the folder, then run the same command again") from None
    return path


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy / torch scalars
        return value.item()
    return str(value)


def read_record(path: str | Path, invalid: Literal["raise", "absent"] = "raise") -> dict[str, Any] | None:
    """The record at ``path``, or None when there is none. A record that is not a JSON object raises a one-line
    error naming the file (``invalid="raise"``), or reads as absent (``"absent"``: the caller redoes the work)."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
        if not isinstance(record, dict):
            raise ValueError("not a JSON object")
    except (ValueError, UnicodeDecodeError) as error:
        if invalid == "absent":
            return None
        raise FeatcacheError(f"record {path} is not valid JSON ({str(error).splitlines()[0]}); delete it (and what it describes) to redo it") from None
    return record


def move_aside(path: str | Path, reason: str, by: str = "featcache") -> Path:
    """Move ``path`` to ``<path>.replaced-<time>`` (a free name) and, for a folder, write why into REPLACED.txt."""
    path = Path(path)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    target, count = path.with_name(f"{path.name}{REPLACED_SUFFIX}{stamp}"), 1
    while target.exists():
        count += 1
        target = path.with_name(f"{path.name}{REPLACED_SUFFIX}{stamp}-{count}")
    os.replace(path, target)
    zarr_node = any((target / name).exists() for name in ("zarr.json", ".zgroup", ".zarray"))
    if target.is_dir() and not zarr_node:  # inside a zarr store (a token set) an extra file would be foreign
        (target / REPLACED_NOTE).write_text(f"moved aside by {by} at {utc_now()}: {reason}\n")
    return target


def changed_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two fingerprinted dicts (to say why something re-runs)."""
    if isinstance(old, dict) and isinstance(new, dict):
        keys = sorted(set(old) | set(new))
        return [key for name in keys for key in changed_keys(old.get(name), new.get(name), f"{prefix}{name}.")]
    return [] if old == new else [prefix.rstrip(".")]


@dataclass(frozen=True)
class Verdict:
    """What to do with an output, and why (shown in status tables)."""

    decision: Decision
    reason: str


def decide(record: dict[str, Any] | None, current: str, outputs_exist: bool, fingerprinted: dict[str, Any] | None = None) -> Verdict:
    """``done`` when the record says the work finished with the ``current`` fingerprint and its outputs exist;
    ``resume`` when it started (or failed) with the same fingerprint; else ``run`` (new, changed inputs, or
    outputs gone). ``fingerprinted`` (what ``current`` hashes) names the changed keys in the reason."""
    if record is None:
        return Verdict("run", "new")
    if record.get("fingerprint") != current:
        changed = changed_keys(record.get("fingerprinted", {}), fingerprinted) if fingerprinted is not None else []
        shown = ", ".join(changed[:4]) + (" ..." if len(changed) > 4 else "")
        return Verdict("run", f"changed: {shown}" if changed else "changed: inputs")
    status = record.get("status")
    if status in ("running", "failed"):
        return Verdict("resume", f"{'interrupted' if status == 'running' else 'failed'}: resumes")
    if status not in ("done", "ok"):
        return Verdict("run", f"unfinished record (status {status!r})")
    if not outputs_exist:
        return Verdict("run", "outputs missing")
    return Verdict("done", f"up to date (ran {record.get('finished', '?')})")


__all__ = [
    "REPLACED_NOTE",
    "REPLACED_SUFFIX",
    "Verdict",
    "changed_keys",
    "decide",
    "fingerprint",
    "move_aside",
    "provenance",
    "read_record",
    "write_record",
]
