"""Sweeps: grids of OCL configurations x seeds trained from one store, serially or on dask, and their reports.

``load_sweep_spec`` reads and checks a spec, ``expand_runs`` lists its runs, ``run_sweep`` trains and
evaluates the runs not finished yet and aggregates them over seeds, ``write_report`` renders a sweep
folder as Markdown and static HTML with PNG charts. Imported lazily, so declaring the operations
(:mod:`featcache.sweeps.operations`) does not load torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "SweepResult": "featcache.sweeps.sweep",
    "run_sweep": "featcache.sweeps.sweep",
    "SweepSpec": "featcache.sweeps.spec",
    "expand_runs": "featcache.sweeps.spec",
    "load_sweep_spec": "featcache.sweeps.spec",
    "write_report": "featcache.sweeps.report",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'featcache.sweeps' has no attribute {name!r}")


__all__ = sorted(_EXPORTS)
