"""`featcache sweep` and `featcache report` as declared operations (params next to :func:`run_sweep` and :func:`write_report`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from featcache.config import to_dict
from featcache.errors import RunsFailed
from featcache.operations import Operation, declare, overrides_mapping, param


@dataclass(frozen=True)
class SweepParams:
    spec: str = param("", help="Sweep spec YAML (configs/ablations/).", role="config", required=True, argument=True)
    store: str | None = param(None, help="Training store (replaces the spec's store).", role="input")
    val_store: str | None = param(None, help="Evaluation store (replaces the spec's val_store).", role="input")
    seeds: int | None = param(None, help="Run seeds 0..N-1 instead of the spec's seeds.")
    set: dict[str, Any] = param(
        help="Spec override key=value (repeatable): any key of the spec file, e.g. eval.limit=8, grid.model.decoder.name=[mlp,tfd], "
        "or set.KEY=VALUE for an OCL config key of every run (set.train.steps=100).",
        role="set",
        default_factory=dict,
    )
    out: str | None = param(None, help="Sweep folder; default runs/sweeps/<name>.", role="out")
    online: bool = param(False, help="Baseline: compute VFM features from the images every step.")
    fuse_seeds: bool = param(False, help="Train the seeds of each configuration together over shared batches.", role="runtime")
    workers: int = param(0, help="Run on a local dask cluster of N single-threaded worker processes.", role="runtime")
    scheduler: str | None = param(None, help="Address of an existing dask scheduler (workers must see the stores and --out).", role="runtime")
    gpu_fraction: float | None = param(None, help="Share of a GPU one run takes on a dask cluster (default: the spec's, 1.0).", role="runtime")
    device: str = param("auto", help="auto | cpu | cuda", role="runtime")
    json_out: str | None = param(None, help="Also write rows and summary to this JSON file.", role="runtime", flag="--json-out")


class Sweep(Operation):
    """Train and evaluate every configuration x seed of a sweep spec; skips finished runs; fails if a run failed."""

    name = "sweep"
    params_type = SweepParams
    # A re-run goes through run_sweep, which keeps finished runs whose config and inputs match and sets the others aside.
    replace = "overwrite"

    def typed_config(self, params: SweepParams) -> Any:
        """The sweep spec: the file, the ``set`` overrides, then ``store`` / ``val_store`` / ``seeds`` when given."""
        from featcache.sweeps.spec import load_sweep_spec

        updates = overrides_mapping(params.set)
        updates.update({key: getattr(params, key) for key in ("store", "val_store", "seeds") if getattr(params, key) is not None})
        return load_sweep_spec(params.spec, updates)

    def out_dir(self, params: SweepParams, spec: Any = None) -> Path:
        return Path(params.out) if params.out else Path("runs") / "sweeps" / (spec or self.typed_config(params)).name

    def outputs(self, params: SweepParams) -> dict[str, str]:
        out = self.out_dir(params)
        return {"dir": str(out), "summary": str(out / "summary.csv")}

    def owned(self, params: SweepParams) -> list[str]:
        return [str(self.out_dir(params))]

    def outputs_exist(self, params: SweepParams) -> bool:
        record = self.out_dir(params) / "sweep.json"
        return record.is_file() and json.loads(record.read_text()).get("finished") is not None

    def fingerprint_data(self, params: SweepParams) -> dict[str, Any]:
        from featcache.sweeps.spec import expand_configurations

        spec = self.typed_config(params)
        described = {key: value for key, value in to_dict(spec).items() if key != "spec_file"}
        configurations = {c.config_id: to_dict(c.config) for c in expand_configurations(spec)}
        return {"spec": described, "configurations": configurations, "online": params.online}

    def input_files(self, params: SweepParams) -> list[str]:
        from featcache.config import find_config_file
        from featcache.sweeps.spec import expand_configurations

        bases = [path for c in expand_configurations(self.typed_config(params)) for path in c.base]
        return [params.spec, *dict.fromkeys(str(find_config_file(path).resolve()) for path in bases)]

    def run(self, params: SweepParams, resume: bool = False, show_progress: bool = True) -> str:
        from featcache.console import error_console
        from featcache.sweeps.results import print_summary_table
        from featcache.sweeps.sweep import run_sweep

        spec = self.typed_config(params)
        result = run_sweep(spec, out=self.out_dir(params, spec), workers=params.workers, scheduler=params.scheduler, fuse_seeds=params.fuse_seeds,
                           online=params.online, device=params.device, gpu_fraction=params.gpu_fraction, show_progress=show_progress)
        print_summary_table(result.summary, f"sweep {spec.name} ({result.ran} runs done now, {result.skipped} finished before)"
                            + (" - RANDOM VFM weights" if result.random_weights else ""))
        if params.json_out is not None:
            Path(params.json_out).parent.mkdir(parents=True, exist_ok=True)
            Path(params.json_out).write_text(json.dumps({"out": str(result.out), "rows": result.rows, "summary": result.summary}, indent=2,
                                                        default=float))
        for row in result.failed:
            error_console.print(f"[bold red]failed[/] {row['config_id']} seed {row['seed']}: {row['error']} "
                                f"({result.out / row['run_dir'] / 'error.txt'})")
        if result.failed:
            first = result.failed[0]
            raise RunsFailed(
                f"{len(result.failed)} of {len(result.rows)} sweep runs failed; first: {first['config_id']} seed {first['seed']}: {first['error']}"
            )
        return f"{len(result.rows)} runs ({result.ran} now, {result.skipped} finished before) in {result.out}"


@dataclass(frozen=True)
class ReportParams:
    sweep: str = param("", help="A sweep folder written by `featcache sweep`.", role="input", required=True, argument=True)
    out: str = param("", help="Folder for report.md, report.html and their PNG files.", role="out", required=True)


class Report(Operation):
    """Markdown + static HTML report of a sweep: summary table, metric bar charts, loss curves, mask grids."""

    name = "report"
    params_type = ReportParams
    replace = "overwrite"

    def outputs(self, params: ReportParams) -> dict[str, str]:
        return {"out": params.out, "report": str(Path(params.out) / "report.md"), "html": str(Path(params.out) / "report.html")}

    def outputs_exist(self, params: ReportParams) -> bool:
        outputs = self.outputs(params)
        return Path(outputs["report"]).is_file() and Path(outputs["html"]).is_file()

    def run(self, params: ReportParams, resume: bool = False, show_progress: bool = True) -> str:
        from featcache.sweeps.report import write_report

        path = write_report(Path(params.sweep), Path(params.out))
        return f"wrote {path} and {path.with_suffix('.html')}"


SWEEP = declare(Sweep())
REPORT = declare(Report())
