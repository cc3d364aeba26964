"""Writer locks: one process at a time writes a store (extract) or a token set (tokenize).

A lock is a small JSON file created with ``O_CREAT | O_EXCL`` next to what it protects (outside the zarr
hierarchy, so readers and checksums never see it). It records who holds it: pid, host, command and start
time. A second writer fails in one line naming the holder and the lock file. A lock whose pid is no longer
alive on this host (the holder was killed) is stale: it is taken over with a warning, so a killed run can
always be resumed by running it again. Dask workers write units under their coordinator's lock.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import sys
import uuid
import warnings
from pathlib import Path
from types import TracebackType
from typing import Any

from featcache.errors import StoreError
from featcache.provenance import utc_now

LOCK_SUFFIX = ".lock"


class StaleLockWarning(UserWarning):
    """A lock left by a process that is gone was taken over."""


def store_lock_path(store: Path) -> Path:
    """The lock file of the store at ``store``: ``<store>.lock`` beside it."""
    store = Path(store).resolve()
    return store.with_name(store.name + LOCK_SUFFIX)


def token_lock_path(store: Path, name: str) -> Path:
    """The lock file of token set ``name`` of ``store``: ``<store>.tokens-<name>.lock`` beside it."""
    store = Path(store).resolve()
    return store.with_name(f"{store.name}.tokens-{name}{LOCK_SUFFIX}")


def slot_lock_path(store: Path, name: str) -> Path:
    """The lock file of slot set ``name`` of ``store``: ``<store>.slots-<name>.lock`` beside it."""
    store = Path(store).resolve()
    return store.with_name(f"{store.name}.slots-{name}{LOCK_SUFFIX}")


def _pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host (a zombie or another user's process counts as alive)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_holder(path: Path) -> dict[str, Any] | None:
    """The holder recorded in a lock file, or None when it is gone or unreadable (being written or truncated)."""
    try:
        holder = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def describe_holder(holder: dict[str, Any]) -> str:
    """``pid@host since time (command)`` for error messages."""
    return (
        f"{holder.get('pid', '?')}@{holder.get('host', '?')} since {holder.get('started', '?')}"
        f" ({holder.get('command', '?')})"
    )


class WriterLock:
    """An exclusive lock file for one writer; use as a context manager (``with WriterLock(path, what):``)."""

    def __init__(self, path: Path, what: str) -> None:
        self.path = Path(path)
        self.what = what
        self.token = uuid.uuid4().hex
        self.held = False

    def _record(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv and sys.argv[0] else "python",
            "started": utc_now(),
            "token": self.token,
        }

    def _create(self) -> bool:
        """Create the lock file exclusively; False when it exists."""
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        except OSError as error:
            raise StoreError(f"cannot create lock file {self.path} for {self.what}: {error.strerror or error}") from None
        try:
            with os.fdopen(fd, "w") as handle:
                json.dump(self._record(), handle)
        except OSError as error:
            self.path.unlink(missing_ok=True)
            raise StoreError(f"cannot write lock file {self.path} for {self.what}: {error.strerror or error}") from None
        return True

    def _is_stale(self, holder: dict[str, Any]) -> bool:
        pid = holder.get("pid")
        return holder.get("host") == socket.gethostname() and isinstance(pid, int) and not _pid_alive(pid)

    def _take_over(self, holder: dict[str, Any]) -> bool:
        """Remove a stale lock if it still is the one read (a concurrent taker may have replaced it)."""
        aside = self.path.with_name(f"{self.path.name}.stale-{self.token}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return True  # someone else removed it: try to create ours
        if _read_holder(aside) != holder:
            # We moved a fresh lock of a concurrent taker: put it back (link fails if yet another one exists).
            try:
                os.link(aside, self.path)
            except OSError:
                pass
            aside.unlink(missing_ok=True)
            return False
        aside.unlink(missing_ok=True)
        warnings.warn(
            f"took over stale lock {self.path} of {self.what}: its holder {describe_holder(holder)} is no longer running",
            StaleLockWarning,
            stacklevel=3,
        )
        return True

    def acquire(self) -> None:
        """Take the lock, or raise a one-line StoreError naming its live holder."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(5):
            if self._create():
                self.held = True
                return
            holder = _read_holder(self.path)
            if holder is None:
                continue  # released meanwhile
            if holder and self._is_stale(holder) and self._take_over(holder):
                continue
            who = describe_holder(holder) if holder else "an unknown process (unreadable lock file)"
            raise StoreError(
                f"{self.what} is being written by {who}: lock file {self.path}; wait for it to finish, "
                "or delete the lock file if that process is gone"
            )
        raise StoreError(f"could not take lock file {self.path} for {self.what}: it keeps changing hands")

    def release(self) -> None:
        """Remove the lock file if it is still ours."""
        if not self.held:
            return
        self.held = False
        holder = _read_holder(self.path)
        if holder is not None and holder.get("token") == self.token:
            try:
                self.path.unlink()
            except OSError as error:
                if error.errno != errno.ENOENT:
                    warnings.warn(f"could not remove lock file {self.path}: {error.strerror}", stacklevel=2)

    def __enter__(self) -> WriterLock:
        self.acquire()
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None) -> None:
        self.release()


__all__ = ["StaleLockWarning", "WriterLock", "describe_holder", "slot_lock_path", "store_lock_path", "token_lock_path"]
