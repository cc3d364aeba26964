"""Sweeps: grids of OCL configurations x seeds trained from one store, serially or on dask, and their reports.

``load_sweep_spec`` reads and checks a spec, ``expand_runs`` lists its runs, ``run_sweep`` trains and
evaluates the runs not finished yet and aggregates them over seeds, ``write_report`` renders a sweep
folder as Markdown and static HTML with PNG charts.
"""

from featcache.sweeps.report import write_report
from featcache.sweeps.spec import SweepSpec, expand_runs, load_sweep_spec
from featcache.sweeps.sweep import SweepResult, run_sweep

__all__ = ["SweepResult", "SweepSpec", "expand_runs", "load_sweep_spec", "run_sweep", "write_report"]
