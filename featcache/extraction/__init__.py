"""Extraction: run a frozen VFM over a dataset's views once and write the store.

Exports load lazily, so reading the config (:mod:`featcache.extraction.config`) does not load torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {"ExtractConfig": "featcache.extraction.config", "ExtractSummary": "featcache.extraction.run", "extract": "featcache.extraction.run"}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'featcache.extraction' has no attribute {name!r}")


__all__ = sorted(_EXPORTS)
