"""`featcache verify`: the full integrity check of a store, every chunk read (see featcache.store.integrity).

The cheap checks (attributes fingerprint, chunk presence) run whenever a store is opened for training, evaluation
or tokenizing; this one also reads every chunk of every array, so blosc and the crc32c checksums verify each, and
checks that every token set is complete.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from featcache.store import integrity, schema
from featcache.store.reader import FeatureStore
from featcache.store.slots import SlotSet, slot_arrays, slot_group_path, slot_names
from featcache.store.tokens import token_group_path


@dataclass
class CheckRow:
    """One line of the verification table."""

    check: str
    subject: str
    detail: str
    problems: list[str] = field(default_factory=list)
    chunks_read: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class VerifyReport:
    store: Path
    rows: list[CheckRow]

    @property
    def problems(self) -> list[str]:
        return [problem for row in self.rows for problem in row.problems]

    @property
    def chunks_read(self) -> int:
        return sum(row.chunks_read for row in self.rows)


def _array_names(store: FeatureStore) -> list[str]:
    names = sorted(store.group.array_keys())
    for token in store.token_names():
        group = store.group[token_group_path(token)]
        names += [f"{token_group_path(token)}/{name}" for name in sorted(group.array_keys())]  # type: ignore[union-attr]
    for name in slot_names(store.group):
        group = store.group[slot_group_path(name)]
        names += [f"{slot_group_path(name)}/{array}" for array in sorted(group.array_keys())]  # type: ignore[union-attr]
    return names


def _slot_set_rows(store: FeatureStore, expected: dict[str, set[tuple[int, ...]]]) -> list[CheckRow]:
    """A row per slot set (completeness, edited attributes, missing arrays); the chunks its done units must have."""
    rows = []
    for name in slot_names(store.group):
        slot_set = SlotSet(store, name)
        done, total = slot_set.completeness()
        completed = slot_set.attributes.get("completed")
        missing = slot_set.missing_arrays()
        rows.append(CheckRow(
            "slot set", name, f"{done}/{total} units" + (", completed" if completed else ", not completed"),
            ([] if done == total and completed else [f"slot set {name!r} incomplete ({done}/{total} units): re-run `featcache encode-slots`"])
            + [f"slot set {name!r}: attributes edited since it was completed: {item}" for item in integrity.changed_attributes(slot_set.attributes) or []]
            + [f"array {array!r} is missing (its zarr.json is gone)" for array in missing],
        ))
        if missing:
            continue
        units = np.flatnonzero(slot_set.group[schema.UNITS_DONE][:] == 1)
        for array in slot_arrays(slot_set.attributes)[:-1]:  # all but units_done
            path = f"{slot_group_path(name)}/{array}"
            expected.setdefault(path, set()).update(tuple(c) for c in integrity.chunk_coords(slot_set.group[array], units))  # type: ignore[arg-type]
    return rows


def _check_array(store: FeatureStore, name: str, expected: set[tuple[int, ...]], advance: Callable[[], None]) -> CheckRow:
    """Read every chunk present on disk; name chunks that are missing (expected) or fail to decode."""
    array: Any = store.group[name]
    present = read = 0
    problems: list[str] = []
    for coords in integrity.chunk_coords(array):
        advance()
        if not integrity.chunk_file(store.path, name, array, coords).is_file():
            if coords in expected:
                problems.append(f"{integrity.chunk_ref(array, name, coords, store.view_names, store.num_samples).describe()} is missing")
            continue
        present += 1
        failure = integrity.read_chunk(array, coords)
        if failure is None:
            read += 1
        else:
            chunk = integrity.chunk_ref(array, name, coords, store.view_names, store.num_samples)
            problems.append(f"{chunk.describe()} is damaged ({integrity.damage_reason(failure)})")
    checksums = "crc32c" if integrity.has_checksums(array) else "no checksums"
    total = 1
    for count in array.cdata_shape:
        total *= count
    detail = f"{read} chunks read of {present} on disk ({total} in the grid, {len(expected)} required), {checksums}"
    return CheckRow("chunks", name, detail, problems, read)


def verify_store(path: str | Path, show_progress: bool = False) -> VerifyReport:
    """Every check featcache can make of the store at ``path``; reads every chunk (a progress bar counts them)."""
    from featcache.console import progress_bar

    store = FeatureStore(path, warn_random=False)
    rows: list[CheckRow] = []
    state = store.completeness()
    rows.append(CheckRow(
        "completeness", "store", f"{state.units_done}/{state.units_total} units done",
        [] if state.complete else [f"store incomplete ({state.units_done}/{state.units_total} units): re-run `featcache extract`"],
    ))
    changed = store.changed_attributes()
    if changed is None:
        finalised = bool(store.attributes.get("completed"))
        detail = "not recorded (finalised before featcache recorded it)" if finalised else "not recorded: the store is not finalised"
        problems = [] if finalised or not state.complete else ["every unit is written but the store is not finalised: re-run `featcache extract`"]
        rows.append(CheckRow("attributes", "fingerprint", detail, problems))
    else:
        rows.append(CheckRow("attributes", "fingerprint", "as recorded at completion" if not changed else "edited since completion",
                             [f"attributes edited since completion: {item}" for item in changed]))
    absent = store.missing_arrays() + [array for token in store.token_names() for array in store.missing_token_arrays(token)]
    rows.append(CheckRow("arrays", "metadata", "every array the layout and the token sets name" if not absent else f"{len(absent)} missing",
                         [f"array {name!r} is missing (its zarr.json is gone)" for name in absent]))
    if store.missing_arrays():
        return VerifyReport(store.path, rows)  # the chunk checks below need the store's own arrays
    expected: dict[str, set[tuple[int, ...]]] = {}
    for name, _, coords in integrity.expected_store_chunks(store.group, store.attributes):
        expected.setdefault(name, set()).add(tuple(coords))
    for token in store.token_names():
        done, total = store.token_completeness(token)
        completed = store.token_attributes(token).get("completed")
        rows.append(CheckRow(
            "token set", token, f"{done}/{total} units" + (", completed" if completed else ", not completed"),
            ([] if done == total and completed else [f"token set {token!r} incomplete ({done}/{total} units): re-run `featcache tokenize`"])
            + [f"token set {token!r}: attributes edited since it was completed: {item}"
               for item in integrity.changed_attributes(store.token_attributes(token)) or []],
        ))
        if store.missing_token_arrays(token):
            continue
        for name, _, coords in integrity.expected_token_chunks(store.group[token_group_path(token)], token):  # type: ignore[arg-type]
            expected.setdefault(name, set()).add(tuple(coords))
    rows += _slot_set_rows(store, expected)
    names = _array_names(store)
    total = 0
    for name in names:
        count = 1
        for size in store.group[name].cdata_shape:  # type: ignore[union-attr]
            count *= size
        total += count
    with progress_bar("chunks", disable=not show_progress) as progress:
        task = progress.add_task("verify", total=total, rate="")
        for name in names:
            rows.append(_check_array(store, name, expected.get(name, set()), lambda: progress.advance(task)))
    return VerifyReport(store.path, rows)


def print_verify_report(report: VerifyReport) -> None:
    """A rich table of what was checked and the result."""
    from rich.table import Table

    from featcache.console import console

    table = Table(title=f"featcache verify {report.store}")
    for column in ("check", "subject", "checked", "result"):
        table.add_column(column, overflow="fold")
    for row in report.rows:
        result = "[green]ok[/]" if row.ok else f"[bold red]{len(row.problems)} problem(s)[/]: " + "; ".join(row.problems[:3])
        if len(row.problems) > 3:
            result += f"; ... ({len(row.problems) - 3} more)"
        table.add_row(row.check, row.subject, row.detail, result)
    console.print(table)


__all__ = ["CheckRow", "VerifyReport", "print_verify_report", "verify_store"]
