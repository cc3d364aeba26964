"""A small name -> factory registry; unknown names fail with the list of valid ones."""

from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

from featcache.errors import FeatcacheError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to entries (factories or specs) for one role, e.g. ``encoders`` or ``datasets``."""

    def __init__(self, role: str) -> None:
        self.role = role
        self._entries: dict[str, T] = {}

    def register(self, name: str, entry: T) -> T:
        if name in self._entries:
            raise ValueError(f"{self.role} {name!r} is registered twice")
        self._entries[name] = entry
        return entry

    def decorator(self, name: str) -> Callable[[T], T]:
        """Register the decorated object under ``name``."""

        def wrap(entry: T) -> T:
            return self.register(name, entry)

        return wrap

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise FeatcacheError(
                f"unknown {self.role} {name!r}; known: {', '.join(sorted(self._entries))}"
            ) from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
