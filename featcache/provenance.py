"""Provenance helpers shared by every artifact: timestamps, library versions and file checksums.

They sit at the bottom of the package (no featcache imports) so stores, runs, sweeps and pipeline
records all describe themselves the same way.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import platform
from pathlib import Path
from typing import Any


def utc_now() -> str:
    """The current UTC time as ISO 8601 with seconds (``2026-12-01T17:35:01+00:00``)."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def library_versions() -> dict[str, str]:
    """Versions of featcache and the libraries whose behaviour an artifact depends on."""
    import dask
    import numcodecs
    import numpy as np
    import timm
    import torch
    import zarr

    import featcache

    return {
        "featcache": featcache.__version__,
        "torch": torch.__version__,
        "timm": timm.__version__,
        "zarr": zarr.__version__,
        "numcodecs": numcodecs.__version__,
        "numpy": np.__version__,
        "dask": dask.__version__,
        "python": platform.python_version(),
    }


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def canonical_json(data: Any) -> str:
    """Key-order independent JSON of ``data`` (what fingerprints hash)."""
    return json.dumps(data, sort_keys=True, default=str, separators=(",", ":"))


def data_sha256(data: Any) -> str:
    """sha256 of :func:`canonical_json` of ``data``: equal for equal contents, whatever the key order."""
    return hashlib.sha256(canonical_json(data).encode()).hexdigest()
