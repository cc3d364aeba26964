"""The run record module: atomic records, one-line errors, move-aside, the done/resume/run decision."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest

from featcache import records
from featcache.errors import FeatcacheError


def test_a_failed_record_write_keeps_the_old_record_and_says_where(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = records.write_record(tmp_path / "r.json", {"status": "done", "n": 1})
    real = Path.write_text

    def full_disk(self: Path, *args: object, **kwargs: object) -> int:
        if self.name.endswith(".tmp"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "write_text", full_disk)
    with pytest.raises(FeatcacheError, match=r"cannot write .*r.json: No space left on device") as error:
        records.write_record(path, {"status": "done", "n": 2})
    assert "\n" not in str(error.value)
    monkeypatch.undo()
    assert json.loads(path.read_text()) == {"status": "done", "n": 1} and not (tmp_path / "r.json.tmp").exists()


def test_torn_records_raise_or_read_as_absent(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    path.write_text('{"status": "do')
    with pytest.raises(FeatcacheError, match=r"record .*r.json is not valid JSON"):
        records.read_record(path)
    assert records.read_record(path, invalid="absent") is None
    assert records.read_record(tmp_path / "none.json") is None


def test_move_aside_never_overwrites_and_says_why(tmp_path: Path) -> None:
    first, second = tmp_path / "run", tmp_path / "run"
    first.mkdir()
    (first / "a").write_text("1")
    moved = records.move_aside(first, "other inputs")
    second.mkdir()
    moved_again = records.move_aside(second, "again")
    assert moved != moved_again and moved.name.startswith("run.replaced-") and (moved / "a").read_text() == "1"
    assert "other inputs" in (moved / records.REPLACED_NOTE).read_text()


@pytest.mark.parametrize(
    ("record", "exists", "decision", "reason"),
    [
        (None, True, "run", "new"),
        ({"fingerprint": "old", "fingerprinted": {"a": 1}}, True, "run", "changed: a"),
        ({"fingerprint": "f", "status": "running"}, True, "resume", "interrupted: resumes"),
        ({"fingerprint": "f", "status": "failed"}, True, "resume", "failed: resumes"),
        ({"fingerprint": "f", "status": "done"}, False, "run", "outputs missing"),
        ({"fingerprint": "f", "status": "ok"}, True, "done", "up to date"),
    ],
)
def test_decide(record: dict | None, exists: bool, decision: str, reason: str) -> None:
    verdict = records.decide(record, "f", exists, {"a": 2})
    assert verdict.decision == decision and verdict.reason.startswith(reason)
