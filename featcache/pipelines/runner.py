"""Run a loaded pipeline: skip what is done, set aside what is stale, resume what was interrupted.

Each stage's fingerprint is the sha256 of its kind, its params (runtime-only ones left out; named configs
by their resolved values) and its upstream stages' fingerprints. A finished stage leaves a record
``<workdir>/.stages/<name>.json`` (fingerprint, params, input file hashes, outputs, upstream run ids,
times, versions). A stage is done when its record matches, its upstream records are the ones it ran
against, and its outputs exist; otherwise it runs, and so does everything downstream of it. A stage
that was interrupted or failed (record ``running`` or ``failed`` with the same fingerprint) resumes through
its own resume (extraction and tokenizing by unit, training from its last checkpoint, sweeps by run). Outputs of an earlier run with
other inputs are moved to ``<output>.replaced-<time>`` (featcache.records.move_aside; eval and analyses are rewritten in place);
outputs the pipeline did not write are never touched: the run refuses before any stage starts.
"""

from __future__ import annotations

import copy
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Literal

from rich.table import Table

from featcache import records
from featcache.config import from_dict, to_dict
from featcache.console import console, error_console
from featcache.errors import FeatcacheError
from featcache.pipelines.kinds import file_hashes
from featcache.pipelines.spec import Pipeline, StageSpec, load_pipeline, shipped_pipeline
from featcache.provenance import file_sha256, library_versions, utc_now
from featcache.store.lock import WriterLock

RECORDS_FOLDER = ".stages"
STATUS_FILE = "pipeline.json"
Decision = Literal["done", "run", "resume"]


@dataclass(frozen=True)
class StagePlan:
    """What the runner will do with one stage, and why."""

    stage: StageSpec
    fingerprint: str
    decision: Decision
    reason: str
    #: Outputs of this pipeline's earlier run of the stage that must be set aside before it runs again.
    stale: tuple[str, ...] = ()


@dataclass
class StageOutcome:
    """One row of the status table."""

    name: str
    kind: str
    status: str  # done | ran | failed | skipped | would run | would resume
    reason: str
    seconds: float | None = None
    note: str = ""


@dataclass
class PipelineResult:
    pipeline: Pipeline
    rows: list[StageOutcome] = field(default_factory=list)
    #: The first failing stage's one-line error, or None.
    error: str | None = None
    dry_run: bool = False

    @property
    def ran(self) -> list[str]:
        return [row.name for row in self.rows if row.status == "ran"]

    def output(self, stage: str, name: str) -> str:
        return self.pipeline.stage(stage).outputs[name]


def record_path(pipeline: Pipeline, stage: str) -> Path:
    return pipeline.workdir / RECORDS_FOLDER / f"{stage}.json"


def read_record(pipeline: Pipeline, stage: str) -> dict[str, Any] | None:
    return records.read_record(record_path(pipeline, stage))


def fingerprint_data(stage: StageSpec, upstream: dict[str, str]) -> dict[str, Any]:
    return {"kind": stage.kind, "params": stage.stage_kind.fingerprint_data(stage.params), "upstream": upstream}


def fingerprints(pipeline: Pipeline) -> dict[str, str]:
    """Every stage's fingerprint (needs come first in ``pipeline.stages``)."""
    found: dict[str, str] = {}
    for stage in pipeline.stages:
        data = fingerprint_data(stage, {name: found[name] for name in stage.needs})
        found[stage.name] = records.fingerprint(data)
    return found


def _recorded_as_today(pipeline: Pipeline, stage: StageSpec, record: dict[str, Any], stage_fingerprints: dict[str, str],
                       current: set[str]) -> str | None:
    """The fingerprint a record's inputs have today: its saved config read as today's code reads a saved config
    (``featcache.config.from_dict``: moved keys in their sections, later fields at the values of their time), and
    upstream fingerprints of stages whose records are current replaced by today's. None when that cannot be said."""
    data = copy.deepcopy(record.get("fingerprinted"))
    config_class = stage.stage_kind.config_class()
    if not isinstance(data, dict) or not isinstance(data.get("params"), dict):
        return None
    if config_class is not None and isinstance(data["params"].get("config"), dict):
        try:
            data["params"]["config"] = to_dict(from_dict(config_class, data["params"]["config"]))
        except FeatcacheError:
            return None
    upstream = data.get("upstream") or {}
    for name, recorded in upstream.items():
        if name in current and name in stage_fingerprints and (read_record(pipeline, name) or {}).get("fingerprint") in (recorded, None):
            upstream[name] = stage_fingerprints[name]
    return records.fingerprint(data)


def plan_pipeline(pipeline: Pipeline, force: Iterable[str] = ()) -> list[StagePlan]:
    """Decide for every stage: done, run or resume; refuses outputs the pipeline did not write."""
    force = list(force)
    for name in force:
        pipeline.stage(name)  # unknown name: one-line error listing the stages
    stage_fingerprints = fingerprints(pipeline)
    plans: list[StagePlan] = []
    runs: set[str] = set()
    #: Stages whose record matches today's fingerprint, directly or once its saved config is read as today's code reads it.
    current: set[str] = set()
    for stage in pipeline.stages:
        kind = stage.stage_kind
        record = read_record(pipeline, stage.name)
        fingerprint = stage_fingerprints[stage.name]
        if record is not None and record.get("fingerprint") != fingerprint and _recorded_as_today(pipeline, stage, record, stage_fingerprints, current) == fingerprint:
            record = {**record, "fingerprint": fingerprint}  # written before a config key moved: the same work
        if record is not None and record.get("fingerprint") == fingerprint:
            current.add(stage.name)
        owned = kind.owned(stage.params)
        ours = record is not None and record.get("owned") == owned
        upstream_runs = {name: (read_record(pipeline, name) or {}).get("run_id") for name in stage.needs}
        decision: Decision = "run"
        if stage.name in force:
            reason = "forced"
        elif rerun := [name for name in stage.needs if name in runs]:
            reason = f"upstream {', '.join(rerun[:3])}{f' (+{len(rerun) - 3} more)' if len(rerun) > 3 else ''} runs"
        elif record is not None and record.get("fingerprint") == fingerprint and record.get("upstream_runs") != upstream_runs:
            reason = "upstream re-ran since"
        else:
            fingerprinted = fingerprint_data(stage, {name: stage_fingerprints[name] for name in stage.needs})
            verdict = records.decide(record, fingerprint, kind.outputs_exist(stage.params), fingerprinted)
            decision, reason = verdict.decision, verdict.reason
        existing = [path for path in owned if Path(path).exists()]
        if decision != "done" and existing and not ours and not kind.adopts_existing:
            raise FeatcacheError(
                f"stage {stage.name!r} ({stage.kind}) would write {existing[0]}, which exists and was not written by this pipeline "
                f"(no record in {record_path(pipeline, stage.name).parent}); move it away or set {stage.name}.out to another path"
            )
        stale = tuple(existing) if decision == "run" and ours and kind.replace == "move" else ()
        if decision != "done":
            runs.add(stage.name)
        plans.append(StagePlan(stage, fingerprint, decision, reason, stale))
    return plans


def _set_aside(paths: tuple[str, ...], stage: str) -> None:
    """Move a stage's own earlier outputs aside (:func:`featcache.records.move_aside`; never deleted: the user decides)."""
    for path in paths:
        if not Path(path).exists():
            continue  # inside an output an upstream stage has just set aside (a token set in a replaced store)
        target = records.move_aside(path, f"the inputs of pipeline stage {stage!r} changed", by="featcache run")
        error_console.print(f"[yellow]stage {stage!r}[/]: its inputs changed; moved its earlier output {path} to {target}")


def run_pipeline(pipeline: Pipeline, force: Iterable[str] = (), dry_run: bool = False, show_progress: bool = True) -> PipelineResult:
    """Run the stages that are not done, in order; stops at the first failing stage (its error in ``result.error``).
    One run of a workdir at a time: ``<workdir>.lock`` names the holder to a second one."""
    if dry_run:
        return _run_pipeline(pipeline, force, dry_run, show_progress)
    pipeline.workdir.parent.mkdir(parents=True, exist_ok=True)
    with WriterLock(pipeline.workdir.with_name(pipeline.workdir.name + ".lock"), f"pipeline workdir {pipeline.workdir}"):
        return _run_pipeline(pipeline, force, dry_run, show_progress)


def _run_pipeline(pipeline: Pipeline, force: Iterable[str], dry_run: bool, show_progress: bool) -> PipelineResult:
    plans = plan_pipeline(pipeline, force)
    stage_fingerprints = {plan.stage.name: plan.fingerprint for plan in plans}
    result = PipelineResult(pipeline, dry_run=dry_run)
    started = utc_now()
    for position, plan in enumerate(plans):
        stage = plan.stage
        record = read_record(pipeline, stage.name) or {}
        if plan.decision == "done":
            result.rows.append(StageOutcome(stage.name, stage.kind, "done", plan.reason, None, record.get("note", "")))
            continue
        if dry_run or result.error is not None:
            status = f"would {plan.decision}" if dry_run else "skipped"
            result.rows.append(StageOutcome(stage.name, stage.kind, status, plan.reason if dry_run else "an earlier stage failed"))
            continue
        error_console.rule(f"[bold]{pipeline.name}[/] stage {position + 1}/{len(plans)}: {stage.name} ({stage.kind}) - {plan.reason}")
        _set_aside(plan.stale, stage.name)
        kind = stage.stage_kind
        record = {
            "stage": stage.name,
            "kind": stage.kind,
            "pipeline": {"name": pipeline.name, "file": str(pipeline.path)},
            "status": "running",
            "fingerprint": plan.fingerprint,
            "fingerprinted": fingerprint_data(stage, {name: stage_fingerprints[name] for name in stage.needs}),
            "run_id": uuid.uuid4().hex,
            "upstream_runs": {name: read_record(pipeline, name)["run_id"] for name in stage.needs},  # type: ignore[index]
            "params": to_dict(stage.params),
            "input_files": file_hashes(kind.input_files(stage.params)),
            "outputs": stage.outputs,
            "owned": kind.owned(stage.params),
            **records.provenance(),
            "started": utc_now(),
        }
        records.write_record(record_path(pipeline, stage.name), record)
        began, began_cpu = time.perf_counter(), time.process_time()
        try:
            note = kind.run(stage.params, resume=plan.decision == "resume", show_progress=show_progress)
        except FeatcacheError as error:
            seconds = time.perf_counter() - began
            # A failed stage resumes like an interrupted one when run again with the same inputs.
            records.write_record(record_path(pipeline, stage.name), {**record, "status": "failed", "error": str(error), "seconds": seconds})
            result.error = f"stage {stage.name!r} ({stage.kind}) failed: {error}"
            result.rows.append(StageOutcome(stage.name, stage.kind, "failed", plan.reason, seconds, str(error)))
            continue
        seconds = time.perf_counter() - began
        timing = {"seconds": seconds, "cpu_seconds": time.process_time() - began_cpu}  # CPU of this process (not dask workers)
        records.write_record(record_path(pipeline, stage.name), {**record, "status": "done", "finished": utc_now(), **timing, "note": note})
        result.rows.append(StageOutcome(stage.name, stage.kind, "ran", plan.reason, seconds, note))
    if not dry_run:
        _write_status(result, started)
    return result


def _write_status(result: PipelineResult, started: str) -> None:
    """``<workdir>/pipeline.json``: the last invocation's table, with the pipeline file's hash."""
    pipeline = result.pipeline
    status = {
        "pipeline": pipeline.name,
        "file": str(pipeline.path),
        "file_sha256": file_sha256(pipeline.path),
        "workdir": str(pipeline.workdir),
        "started": started,
        "finished": utc_now(),
        "error": result.error,
        "stages": [asdict(row) for row in result.rows],
        "versions": library_versions(),
    }
    records.write_record(pipeline.workdir / STATUS_FILE, status)


STATUS_STYLES = {"done": "green", "ran": "bold green", "failed": "bold red", "skipped": "dim", "would run": "yellow", "would resume": "yellow"}


def print_pipeline_result(result: PipelineResult) -> None:
    """The status table: one row per stage with status, why, seconds and what it did."""
    pipeline = result.pipeline
    title = f"pipeline {pipeline.name} ({pipeline.workdir})" + (" - dry run" if result.dry_run else "")
    if pipeline.description:
        title += f"\n{pipeline.description}"
    table = Table(title=title, title_justify="left")
    for column in ("stage", "kind", "status", "why", "seconds", "result"):
        table.add_column(column, justify="right" if column == "seconds" else "left", overflow="fold")
    for row in result.rows:
        style = STATUS_STYLES.get(row.status, "")
        seconds = "-" if row.seconds is None else f"{row.seconds:.1f}"
        table.add_row(row.name, row.kind, f"[{style}]{row.status}[/]" if style else row.status, row.reason, seconds, row.note)
    console.print(table)


def run_quickstart(out: str | Path | None = None, overrides: list[str] | None = None, show_progress: bool = True) -> PipelineResult:
    """Run the shipped ``pipelines/quickstart.yaml`` with ``out`` as its workdir (``featcache quickstart``)."""
    return run_pipeline(load_pipeline(shipped_pipeline("quickstart"), overrides, out), show_progress=show_progress)
