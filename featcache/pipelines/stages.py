"""Stage kinds: each maps typed params onto one library function (no subprocesses).

A kind declares its params dataclass (what a pipeline file may set), which params are input paths, what
it writes (``outputs``, referenced downstream as ``${stages.NAME.OUTPUT}``), which params only change
how it runs (device, workers, batch sizes: left out of the fingerprint, so switching them re-runs
nothing), how a stale output of its own is set aside, and the call that does the work.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Union

from featcache.config import flatten_keys, load_config, merge, nest_keys, to_dict
from featcache.errors import ConfigError, FeatcacheError
from featcache.registry import Registry

if TYPE_CHECKING:
    from featcache.training.loop import TrainResult

#: One config file or several layered in order (e.g. a method config, then ``configs/ocl/tiny.yaml``).
ConfigPaths = Union[str, list[str], None]


def _config_list(paths: ConfigPaths) -> list[str]:
    return [] if not paths else [paths] if isinstance(paths, str) else list(paths)


def typed_config(cls: type, paths: ConfigPaths, values: dict[str, Any]) -> Any:
    """``cls`` defaults, the config file(s) in order, then the stage's ``set`` values (unknown keys fail)."""
    config = load_config(cls, _config_list(paths))
    return merge(config, nest_keys(flatten_keys(values))) if values else config


def _require(params: Any, *names: str) -> None:
    for name in names:
        if not getattr(params, name):
            raise ConfigError(f"param {name!r} is required")


def _training_note(result: "TrainResult") -> str:
    loss = result.last_row.get("loss_total")
    loss_text = f", loss {loss:.4g}" if isinstance(loss, float) else ""
    return f"{result.steps} steps, {result.samples_per_second:.1f} samples/s{loss_text}"


class StageKind:
    """Base of the stage kinds: typed params in, outputs on disk, a short note about what was done."""

    name: str = ""
    params_type: type = object
    #: Params holding input paths, made absolute against the current directory at load time.
    input_paths: tuple[str, ...] = ()
    #: Params holding config files: looked up from the current directory, then among the shipped configs.
    config_paths: tuple[str, ...] = ()
    #: Params that change how a stage runs but not what it writes (left out of the fingerprint).
    runtime_params: frozenset[str] = frozenset({"device"})
    #: The kind writes the path in its ``out`` param (default ``<workdir>/<stage name><out_suffix>``).
    writes_out: bool = True
    out_suffix: str = ""
    #: An existing output not written by the pipeline is handed to the library, which resumes or refuses it.
    adopts_existing: bool = False
    #: How a stage's own earlier output is replaced when its inputs changed: set aside (``move``) or rewritten in place.
    replace: Literal["move", "overwrite"] = "move"

    def validate(self, params: Any) -> None:
        """Check params and the typed config they name (raises ConfigError); called at load time."""

    def outputs(self, params: Any) -> dict[str, str]:
        return {"out": params.out}

    def owned(self, params: Any) -> list[str]:
        """Paths this stage creates (checked for clashes, set aside when stale)."""
        return [params.out]

    def outputs_exist(self, params: Any) -> bool:
        return all(Path(path).exists() for path in self.owned(params))

    def fingerprint_data(self, params: Any) -> dict[str, Any]:
        """What the output depends on: the params minus runtime ones, with named configs resolved to their values."""
        return {key: value for key, value in to_dict(params).items() if key not in self.runtime_params}

    def input_files(self, params: Any) -> list[str]:
        """Files whose content is recorded in the stage record (configs are fingerprinted by resolved value)."""
        return []

    def run(self, params: Any, resume: bool, show_progress: bool) -> str:
        """Do the work; returns a one-line note for the status table."""
        raise NotImplementedError


STAGE_KINDS = Registry[StageKind]("stage kind")


# ----------------------------------------------------------------------------- synth
@dataclass(frozen=True)
class SynthParams:
    """featcache.datasets.write_synthetic: procedural multi-object scenes with masks."""

    out: str = ""
    images: int = 2000
    seed: int = 0
    size: int = 256
    video: bool = False
    frames: int = 8
    min_objects: int = 3
    max_objects: int = 7


class SynthKind(StageKind):
    name = "synth"
    params_type = SynthParams

    def outputs(self, params: SynthParams) -> dict[str, str]:
        return {"data": params.out}

    def run(self, params: SynthParams, resume: bool, show_progress: bool) -> str:
        from featcache.console import progress_bar
        from featcache.datasets import write_synthetic

        with progress_bar("images", disable=not show_progress) as progress:
            task = progress.add_task("synth", total=params.images, rate="")
            write_synthetic(
                Path(params.out),
                images=params.images,
                seed=params.seed,
                size=params.size,
                video=params.video,
                frames=params.frames,
                min_objects=params.min_objects,
                max_objects=params.max_objects,
                progress=lambda n: progress.update(task, completed=n),
            )
        return f"{params.images} {'clips' if params.video else 'images'} of {params.size} px"


# ----------------------------------------------------------------------------- extract
@dataclass(frozen=True)
class ExtractParams:
    """featcache.extraction.extract over ``open_dataset(data, split)`` with an ExtractConfig."""

    #: Dataset spec: a folder or FORMAT:PATH (coco:, voc:, clevrtex:, clips:), as for `featcache extract --data`.
    data: str = ""
    split: str | None = None
    #: ExtractConfig YAML file(s) (configs/extract/); ``set`` overrides fields (vfm, weights, resolution, ...).
    config: ConfigPaths = None
    set: dict[str, Any] = field(default_factory=dict)
    out: str = ""
    device: str = "auto"
    workers: int = 0
    scheduler: str | None = None
    skip_bad: bool = False
    decode_threads: int = 2


class ExtractKind(StageKind):
    name = "extract"
    params_type = ExtractParams
    config_paths = ("config",)
    runtime_params = frozenset({"device", "workers", "scheduler", "decode_threads"})
    out_suffix = ".zarr"
    adopts_existing = True

    def config(self, params: ExtractParams) -> Any:
        from featcache.extraction import ExtractConfig

        return typed_config(ExtractConfig, params.config, params.set)

    def validate(self, params: ExtractParams) -> None:
        from featcache.encoders import ENCODERS

        _require(params, "data")
        ENCODERS.get(self.config(params).vfm)

    def outputs(self, params: ExtractParams) -> dict[str, str]:
        return {"store": params.out}

    def fingerprint_data(self, params: ExtractParams) -> dict[str, Any]:
        config = to_dict(self.config(params))
        config.pop("batch_size")  # runtime only: the store's bytes do not depend on it
        return {"data": params.data, "split": params.split, "skip_bad": params.skip_bad, "config": config}

    def input_files(self, params: ExtractParams) -> list[str]:
        return _config_list(params.config)

    def run(self, params: ExtractParams, resume: bool, show_progress: bool) -> str:
        from featcache.datasets import open_dataset
        from featcache.extraction import extract

        summary = extract(
            open_dataset(params.data, params.split),
            params.out,
            self.config(params),
            device=params.device,
            workers=params.workers,
            scheduler=params.scheduler,
            skip_bad=params.skip_bad,
            decode_threads=params.decode_threads,
            show_progress=show_progress,
        )
        if not summary.complete:
            raise FeatcacheError(f"store {params.out} is incomplete after extraction; run the pipeline again to resume it")
        return f"{summary.samples_run} samples at {summary.samples_per_second:.1f} images/s, {summary.samples_bad} bad"


# ----------------------------------------------------------------------------- train-vq
@dataclass(frozen=True)
class TrainVQParams:
    """featcache.stages.train_vq with a VQTrainConfig (configs/vq/)."""

    store: str = ""
    config: ConfigPaths = None
    set: dict[str, Any] = field(default_factory=dict)
    out: str = ""
    online: bool = False
    device: str = "auto"


class TrainingKind(StageKind):
    """A stage that trains a run folder from a store with a typed, layered config (train-vq, train-ocl)."""

    input_paths: tuple[str, ...] = ("store",)
    config_paths = ("config",)

    def config_class(self) -> type:
        raise NotImplementedError

    def config(self, params: Any) -> Any:
        return typed_config(self.config_class(), params.config, params.set)

    def validate(self, params: Any) -> None:
        _require(params, "store")
        self.config(params)

    def outputs(self, params: Any) -> dict[str, str]:
        return {"run": params.out}

    def fingerprint_data(self, params: Any) -> dict[str, Any]:
        inputs = {name: getattr(params, name) for name in self.input_paths}
        return {**inputs, "online": params.online, "config": to_dict(self.config(params))}

    def input_files(self, params: Any) -> list[str]:
        return _config_list(params.config)

    def train(self, params: Any, resume: bool, show_progress: bool) -> TrainResult:
        raise NotImplementedError

    def run(self, params: Any, resume: bool, show_progress: bool) -> str:
        from featcache.training.checkpoint import CONFIG_NAME

        resume = resume and (Path(params.out) / CONFIG_NAME).is_file()
        return _training_note(self.train(params, resume, show_progress))


class TrainVQKind(TrainingKind):
    name = "train-vq"
    params_type = TrainVQParams

    def config_class(self) -> type:
        from featcache.training.config import VQTrainConfig

        return VQTrainConfig

    def train(self, params: TrainVQParams, resume: bool, show_progress: bool) -> TrainResult:
        from featcache.training.vq import train_vq

        return train_vq(
            params.store, self.config(params), params.out, device=params.device, resume=resume, online=params.online, show_progress=show_progress
        )


# ----------------------------------------------------------------------------- tokenize
@dataclass(frozen=True)
class TokenizeParams:
    """featcache.stages.tokenize.tokenize_store: a VQ run's tokens written into the store as set ``name``."""

    store: str = ""
    vq: str = ""
    name: str = ""
    batch_size: int = 256
    device: str = "auto"


class TokenizeKind(StageKind):
    name = "tokenize"
    params_type = TokenizeParams
    input_paths = ("store", "vq")
    runtime_params = frozenset({"device", "batch_size"})
    writes_out = False

    def validate(self, params: TokenizeParams) -> None:
        _require(params, "store", "vq", "name")

    def outputs(self, params: TokenizeParams) -> dict[str, str]:
        return {"store": params.store, "tokens": params.name}

    def owned(self, params: TokenizeParams) -> list[str]:
        from featcache.store.tokens import token_group_path

        return [str(Path(params.store) / token_group_path(params.name))]

    def outputs_exist(self, params: TokenizeParams) -> bool:
        from featcache.store import FeatureStore

        if not Path(params.store).is_dir():
            return False
        store = FeatureStore(params.store, warn_random=False)
        return params.name in store.token_names() and bool(store.token_attributes(params.name).get("completed"))

    def run(self, params: TokenizeParams, resume: bool, show_progress: bool) -> str:
        from featcache.stages.tokenize import tokenize_store

        summary = tokenize_store(
            params.store, params.vq, params.name, batch_size=params.batch_size, device=params.device, show_progress=show_progress
        )
        return f"token set {summary.name!r}: {summary.codebook_size} codes, {summary.units_run}/{summary.units_total} units written"


# ----------------------------------------------------------------------------- train-ocl
@dataclass(frozen=True)
class TrainOCLParams:
    """featcache.stages.train_ocl.train_ocl with an OCLTrainConfig (configs/ocl/, layered)."""

    store: str = ""
    config: ConfigPaths = None
    set: dict[str, Any] = field(default_factory=dict)
    out: str = ""
    val_store: str | None = None
    online: bool = False
    device: str = "auto"


class TrainOCLKind(TrainingKind):
    name = "train-ocl"
    params_type = TrainOCLParams
    input_paths = ("store", "val_store")

    def config_class(self) -> type:
        from featcache.training.config import OCLTrainConfig

        return OCLTrainConfig

    def train(self, params: TrainOCLParams, resume: bool, show_progress: bool) -> TrainResult:
        from featcache.training.ocl import train_ocl

        return train_ocl(
            params.store,
            self.config(params),
            params.out,
            device=params.device,
            resume=resume,
            online=params.online,
            validation_store=params.val_store,
            show_progress=show_progress,
        )


# ----------------------------------------------------------------------------- eval
@dataclass(frozen=True)
class EvalParams:
    """featcache.stages.train_ocl.evaluate_run: eval.json and masks.png of an OCL run."""

    run: str = ""
    #: Store to score on (default: the run's training store).
    store: str | None = None
    #: A name from featcache.stages.evaluate.PROTOCOLS (vvo, dinosaur, vvo-code, oclf, videosaur, videosaur-instances).
    protocol: str = "vvo"
    view: str = "center"
    limit: int | None = None
    baseline: bool = False
    batch_size: int = 64
    out: str = ""
    device: str = "auto"


def _metrics_note(metrics: dict[str, Any]) -> str:
    return ", ".join(f"{name} {metrics[name]:.3f}" for name in ("ari", "fg_ari", "mbo", "miou") if isinstance(metrics.get(name), float))


class EvalKind(StageKind):
    name = "eval"
    params_type = EvalParams
    input_paths = ("run", "store")
    runtime_params = frozenset({"device", "batch_size"})
    replace = "overwrite"

    def validate(self, params: EvalParams) -> None:
        from featcache.metrics.protocols import get_protocol

        _require(params, "run")
        get_protocol(params.protocol)

    def outputs(self, params: EvalParams) -> dict[str, str]:
        return {"out": params.out, "json": str(Path(params.out) / "eval.json")}

    def outputs_exist(self, params: EvalParams) -> bool:
        return Path(self.outputs(params)["json"]).is_file()

    def run(self, params: EvalParams, resume: bool, show_progress: bool) -> str:
        from featcache.stages.evaluate import evaluate_run, print_evaluation

        result = evaluate_run(
            params.run,
            params.store,
            protocol_name=params.protocol,
            view=params.view,
            batch_size=params.batch_size,
            device=params.device,
            limit=params.limit,
            baseline=params.baseline,
            out=params.out,
            show_progress=show_progress,
        )
        print_evaluation(result)
        note = _metrics_note(result["metrics"])
        if "kmeans_baseline" in result:
            note += f"; kMeans fg_ari {result['kmeans_baseline']['fg_ari']:.3f}"
        return note


# ----------------------------------------------------------------------------- analyses
@dataclass(frozen=True)
class SeparabilityParams:
    """featcache.analysis.separability.analyze_separability: separability.json and .csv in ``out``."""

    stores: list[str] = field(default_factory=list)
    view: str = "center"
    limit: int | None = None
    tokens: str | None = None
    pca_dims: int = 32
    seed: int = 0
    out: str = ""


class SeparabilityKind(StageKind):
    name = "analyze-separability"
    params_type = SeparabilityParams
    input_paths = ("stores",)
    runtime_params = frozenset()
    replace = "overwrite"

    def validate(self, params: SeparabilityParams) -> None:
        _require(params, "stores")

    def outputs(self, params: SeparabilityParams) -> dict[str, str]:
        out = Path(params.out)
        return {"out": params.out, "json": str(out / "separability.json"), "csv": str(out / "separability.csv")}

    def outputs_exist(self, params: SeparabilityParams) -> bool:
        outputs = self.outputs(params)
        return Path(outputs["json"]).is_file() and Path(outputs["csv"]).is_file()

    def run(self, params: SeparabilityParams, resume: bool, show_progress: bool) -> str:
        from featcache.analysis.separability import analyze_separability, print_separability_table, write_separability_csv, write_separability_json

        rows = analyze_separability(
            params.stores, view=params.view, limit=params.limit, token_name=params.tokens, pca_dims=params.pca_dims, seed=params.seed,
            show_progress=show_progress,
        )
        print_separability_table(rows)
        outputs = self.outputs(params)
        write_separability_json(rows, outputs["json"])
        write_separability_csv(rows, outputs["csv"])
        return ", ".join(f"{Path(row['store']).name} {row['kind']}: kMeans fg_ari {row['kmeans_fg_ari']:.3f}" for row in rows)


@dataclass(frozen=True)
class CodesParams:
    """featcache.analysis.separability.analyze_codes: code_statistics.json and PNG plots in ``out``."""

    store: str = ""
    tokens: str = ""
    view: str = "center"
    limit: int | None = None
    out: str = ""


class CodesKind(StageKind):
    name = "analyze-codes"
    params_type = CodesParams
    input_paths = ("store",)
    runtime_params = frozenset()
    replace = "overwrite"

    def validate(self, params: CodesParams) -> None:
        _require(params, "store", "tokens")

    def outputs(self, params: CodesParams) -> dict[str, str]:
        return {"out": params.out, "json": str(Path(params.out) / "code_statistics.json")}

    def outputs_exist(self, params: CodesParams) -> bool:
        return Path(self.outputs(params)["json"]).is_file()

    def run(self, params: CodesParams, resume: bool, show_progress: bool) -> str:
        from featcache.analysis.codes import analyze_codes, print_code_table

        statistics = analyze_codes(params.store, params.tokens, params.out, view=params.view, limit=params.limit)
        print_code_table(statistics, title=f"codes {params.tokens!r} of {params.store}")
        return f"{statistics.used_codes}/{statistics.num_codes} codes used, perplexity {statistics.perplexity:.1f}"


# ----------------------------------------------------------------------------- sweep and report
@dataclass(frozen=True)
class SweepParams:
    """featcache.sweeps.run_sweep: a sweep spec's configurations x seeds trained and evaluated (finished runs are kept)."""

    #: Sweep spec file (configs/ablations/).
    spec: str = ""
    #: Training store (replaces the spec's; usually ``${stages.tokenize.store}``).
    store: str = ""
    val_store: str | None = None
    #: Spec overrides as `featcache sweep --set` takes them: spec keys (``seeds``, ``eval.limit``, ``grid.KEY``)
    #: or OCL config keys applied to every run (``train.steps``, ``model.aggregator.num_slots``).
    set: dict[str, Any] = field(default_factory=dict)
    out: str = ""
    online: bool = False
    fuse_seeds: bool = False
    workers: int = 0
    scheduler: str | None = None
    gpu_fraction: float | None = None
    device: str = "auto"


def _spec_overrides(params: SweepParams) -> list[str]:
    values = {**flatten_keys(params.set), "store": params.store, **({"val_store": params.val_store} if params.val_store else {})}
    return [f"{key}={json.dumps(value)}" for key, value in values.items()]  # JSON is YAML: parse_overrides reads it back


class SweepKind(StageKind):
    name = "sweep"
    params_type = SweepParams
    input_paths = ("store", "val_store")
    config_paths = ("spec",)
    # Fused seeds train the same runs over shared batches; workers only spread them.
    runtime_params = frozenset({"device", "workers", "scheduler", "gpu_fraction", "fuse_seeds"})
    # A re-run goes through run_sweep, which keeps finished runs whose config and inputs match and sets the others aside.
    replace = "overwrite"

    def spec(self, params: SweepParams) -> Any:
        from featcache.sweeps import load_sweep_spec

        return load_sweep_spec(params.spec, _spec_overrides(params))

    def validate(self, params: SweepParams) -> None:
        _require(params, "spec", "store")
        self.spec(params)

    def outputs(self, params: SweepParams) -> dict[str, str]:
        return {"dir": params.out, "summary": str(Path(params.out) / "summary.csv")}

    def outputs_exist(self, params: SweepParams) -> bool:
        record = Path(params.out) / "sweep.json"
        return record.is_file() and json.loads(record.read_text()).get("finished") is not None

    def fingerprint_data(self, params: SweepParams) -> dict[str, Any]:
        from featcache.sweeps.spec import expand_configurations

        spec = self.spec(params)
        described = {key: value for key, value in to_dict(spec).items() if key != "spec_file"}
        configurations = {c.config_id: to_dict(c.config) for c in expand_configurations(spec)}
        return {"spec": described, "configurations": configurations, "online": params.online}

    def input_files(self, params: SweepParams) -> list[str]:
        from featcache.config import find_config_file
        from featcache.sweeps.spec import expand_configurations

        bases = [path for c in expand_configurations(self.spec(params)) for path in c.base]
        return [params.spec, *dict.fromkeys(str(find_config_file(path).resolve()) for path in bases)]

    def run(self, params: SweepParams, resume: bool, show_progress: bool) -> str:
        from featcache.sweeps import run_sweep
        from featcache.sweeps.results import print_summary_table

        spec = self.spec(params)
        result = run_sweep(
            spec,
            out=Path(params.out),
            workers=params.workers,
            scheduler=params.scheduler,
            fuse_seeds=params.fuse_seeds,
            online=params.online,
            device=params.device,
            gpu_fraction=params.gpu_fraction,
            show_progress=show_progress,
        )
        print_summary_table(result.summary, f"sweep {spec.name}" + (" - RANDOM VFM weights" if result.random_weights else ""))
        if result.failed:
            first = result.failed[0]
            raise FeatcacheError(
                f"{len(result.failed)} of {len(result.rows)} sweep runs failed; first: {first['config_id']} seed {first['seed']}: {first['error']}"
            )
        return f"{len(result.rows)} runs ({result.ran} now, {result.skipped} finished before)"


@dataclass(frozen=True)
class ReportParams:
    """featcache.sweeps.write_report: report.md, report.html and PNG charts of a sweep folder."""

    sweep: str = ""
    out: str = ""


class ReportKind(StageKind):
    name = "report"
    params_type = ReportParams
    input_paths = ("sweep",)
    runtime_params = frozenset()
    replace = "overwrite"

    def validate(self, params: ReportParams) -> None:
        _require(params, "sweep")

    def outputs(self, params: ReportParams) -> dict[str, str]:
        return {"out": params.out, "report": str(Path(params.out) / "report.md"), "html": str(Path(params.out) / "report.html")}

    def outputs_exist(self, params: ReportParams) -> bool:
        outputs = self.outputs(params)
        return Path(outputs["report"]).is_file() and Path(outputs["html"]).is_file()

    def run(self, params: ReportParams, resume: bool, show_progress: bool) -> str:
        from featcache.sweeps import write_report

        path = write_report(Path(params.sweep), Path(params.out))
        return f"{path} and {path.with_suffix('.html').name}"


for _kind in (
    SynthKind(), ExtractKind(), TrainVQKind(), TokenizeKind(), TrainOCLKind(), EvalKind(), SeparabilityKind(), CodesKind(), SweepKind(), ReportKind()
):
    STAGE_KINDS.register(_kind.name, _kind)


def file_hashes(paths: list[str]) -> dict[str, str]:
    """sha256 of each existing input file (recorded with the stage; missing files are named, not hashed)."""
    from featcache.provenance import file_sha256

    return {path: file_sha256(Path(path)) if Path(path).is_file() else "missing" for path in paths}

