"""Sweep specs: a YAML file naming a store, layered base configs, overrides, a grid, cases and seeds.

A spec expands into configurations (the cartesian product of ``grid`` times the ``cases``) and each
configuration into one OCL run per seed. Every configuration is built with the typed config loader when
the spec is loaded, so a bad key, a wrong type or a decoder that cannot take a grid value fails before
any run starts, naming the spec file, the configuration and the valid keys.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from featcache.config import flatten_keys, load_config, merge, moved_key, nest_keys, to_dict
from featcache.errors import ConfigError
from featcache.operations import overrides_mapping
from featcache.stages.evaluate import EvalParams
from featcache.training.config import OCLTrainConfig, with_seed

#: Keys a sweep controls itself (through ``seeds`` and ``data_seed``), never through set/grid/cases.
RESERVED_KEYS = ("train.seed", "train.data_seed")
#: Characters kept in a configuration id (it names a folder); anything else becomes ``_``.
_UNSAFE_ID_CHARACTERS = re.compile(r"[^A-Za-z0-9._=,+-]")


@dataclass(frozen=True)
class CaseSpec:
    """A named set of overrides; its ``base`` files (e.g. the case's method config) are layered before the spec's
    base (e.g. a size preset such as configs/ocl/tiny.yaml)."""

    name: str = ""
    set: dict[str, Any] = field(default_factory=dict)
    base: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class SweepSpec:
    """A sweep: configurations = product(grid) x cases, each trained once per seed on ``store``."""

    #: Default output folder: runs/sweeps/<name>. Defaults to the spec file's stem.
    name: str = ""
    store: str = ""
    #: Store to evaluate on (default: the training store).
    val_store: str | None = None
    #: Layered OCL config files (paths relative to the working directory), e.g. a method config then tiny.yaml;
    #: a case's own base files come first.
    base: list[str] = field(default_factory=list)
    #: Overrides of every run (dotted or nested keys of OCLTrainConfig).
    set: dict[str, Any] = field(default_factory=dict)
    #: Dotted OCLTrainConfig key -> list of values; the configurations are the cartesian product.
    grid: dict[str, Any] = field(default_factory=dict)
    cases: list[CaseSpec] = field(default_factory=list)
    #: A list of seeds, or n for seeds 0..n-1.
    seeds: int | list[int] = 3
    #: Seed of the batch order and view choice shared by all seeds (None: each run uses its seed).
    data_seed: int | None = 0
    #: How every run is scored: the eval operation's params (``featcache eval`` options); the sweep sets run, store,
    #: out and device itself.
    eval: EvalParams = field(default_factory=EvalParams)
    #: Share of one GPU a run takes on a dask cluster (1.0: a whole GPU per run).
    gpu_fraction: float = 1.0
    #: The file the spec was read from (set by load_sweep_spec; used in error messages).
    spec_file: str = ""

    @property
    def label(self) -> str:
        return f"sweep spec {self.spec_file or self.name or '(inline)'}"


@dataclass(frozen=True)
class Configuration:
    """One point of the sweep: its id, the values that vary, and the resolved config (before the seed)."""

    config_id: str
    #: What distinguishes it from the other configurations (grid keys with several values, and ``case``).
    values: dict[str, Any]
    #: Every override applied on the base configs, flat dotted keys, in order: set, case, grid, data_seed.
    overrides: dict[str, Any]
    base: list[str]
    config: OCLTrainConfig


@dataclass(frozen=True)
class PlannedRun:
    """One run of a sweep: a configuration trained with one seed, in ``runs/<config_id>/seed<k>``."""

    configuration: Configuration
    seed: int
    config: OCLTrainConfig

    @property
    def config_id(self) -> str:
        return self.configuration.config_id

    @property
    def relative_dir(self) -> Path:
        return Path("runs") / self.config_id / f"seed{self.seed}"

    @property
    def overrides(self) -> dict[str, Any]:
        return {**self.configuration.overrides, "train.seed": self.seed}


def config_sha(config: OCLTrainConfig) -> str:
    """sha256 of the resolved config dict (key order independent): what a finished run is matched by."""
    return hashlib.sha256(json.dumps(to_dict(config), sort_keys=True).encode()).hexdigest()


def resolve_seeds(seeds: int | list[int], label: str = "seeds") -> list[int]:
    """``n`` -> ``[0, ..., n-1]``; a list is checked for duplicates and negative values."""
    if isinstance(seeds, int):
        if seeds < 1:
            raise ConfigError(f"{label}: expected at least 1 seed, got {seeds}")
        return list(range(seeds))
    if not seeds:
        raise ConfigError(f"{label}: the list of seeds is empty")
    if len(set(seeds)) != len(seeds) or any(seed < 0 for seed in seeds):
        raise ConfigError(f"{label}: expected distinct non-negative seeds, got {list(seeds)}")
    return list(seeds)


def _slug_value(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "-".join(_slug_value(v) for v in value)
    return str(value) if value != "" else "none"


def _short_key(key: str) -> str:
    """Configuration ids drop the ``model.`` prefix: ``decoder.name=tfd`` reads better than ``model.decoder.name=tfd``."""
    return key.removeprefix("model.")


def configuration_id(values: dict[str, Any]) -> str:
    """A readable, filesystem-safe id: ``decoder.name=tfd,case=vvo``; only a case gives its name; nothing varies: ``base``."""
    if not values:
        return "base"
    if list(values) == ["case"]:
        text = str(values["case"])
    else:
        text = ",".join(f"{_short_key(key)}={_slug_value(value)}" for key, value in values.items())
    return _UNSAFE_ID_CHARACTERS.sub("_", text)


def _check_keys(label: str, where: str, keys: Any) -> None:
    for key in keys:
        if key in RESERVED_KEYS or moved_key(OCLTrainConfig, key) in RESERVED_KEYS:
            raise ConfigError(f"{label}: {where} may not set {key!r}; use the spec's seeds / data_seed keys")


def expand_configurations(spec: SweepSpec) -> list[Configuration]:
    """Every configuration of ``spec``, each built and checked with the typed OCL config loader.

    Overrides apply in order set -> case -> grid -> data_seed onto the case's base files then the spec's;
    all of a configuration's overrides are merged at once, so a grid value and the case key that makes it
    valid (e.g. decoder name and target) may come from different places.
    """
    label = spec.label
    if not spec.store:
        raise ConfigError(f"{label}: key 'store' is required (a feature store made by `featcache extract`)")
    common = flatten_keys(spec.set)
    _check_keys(label, "set", common)
    grid: dict[str, list[Any]] = {}
    for key, values in spec.grid.items():
        if not isinstance(values, list):
            raise ConfigError(f"{label}: grid key {key!r} must map to a list of values, got {values!r}")
        if not values:
            raise ConfigError(f"{label}: grid key {key!r} has an empty list of values; give at least one or remove the key")
        grid[key] = values
    _check_keys(label, "grid", grid)
    names = [case.name for case in spec.cases]
    if any(not name for name in names):
        raise ConfigError(f"{label}: every case needs a name (cases: {names})")
    if len(set(names)) != len(names):
        raise ConfigError(f"{label}: case names must be unique, got {names}")
    cases: list[CaseSpec | None] = list(spec.cases) or [None]
    for case in spec.cases:
        _check_keys(label, f"case {case.name!r}", flatten_keys(case.set))
    resolve_seeds(spec.seeds, f"{label}: seeds")
    if not 0.0 < spec.gpu_fraction <= 1.0:
        raise ConfigError(f"{label}: gpu_fraction must lie in (0, 1], got {spec.gpu_fraction}")

    varying = [key for key, values in grid.items() if len(values) > 1]
    base_configs: dict[tuple[str, ...], OCLTrainConfig] = {}
    configurations: list[Configuration] = []
    for case, point in itertools.product(cases, itertools.product(*grid.values())):
        grid_values = dict(zip(grid, point))
        values = {key: grid_values[key] for key in varying}
        if case is not None:
            values["case"] = case.name
        config_id = configuration_id(values)
        overrides = {**common, **(flatten_keys(case.set) if case else {}), **grid_values}
        if spec.data_seed is not None:
            overrides["train.data_seed"] = spec.data_seed
        base = [*(case.base if case is not None else []), *spec.base]
        try:
            if tuple(base) not in base_configs:
                base_configs[tuple(base)] = load_config(OCLTrainConfig, list(base))
            config = merge(base_configs[tuple(base)], nest_keys(overrides))
        except ConfigError as error:
            raise ConfigError(f"{label}: configuration {config_id}: {error}") from None
        configurations.append(Configuration(config_id, values, overrides, base, config))
    ids = [c.config_id for c in configurations]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ConfigError(f"{label}: configurations share the id(s) {', '.join(duplicates)}; make the grid values or case names distinct")
    return configurations


def expand_runs(spec: SweepSpec, seeds: int | list[int] | None = None) -> list[PlannedRun]:
    """Configurations x seeds (``seeds`` overrides the spec's), configuration-major."""
    seed_list = resolve_seeds(spec.seeds if seeds is None else seeds, f"{spec.label}: seeds")
    return [
        PlannedRun(configuration, seed, with_seed(configuration.config, seed))
        for configuration in expand_configurations(spec)
        for seed in seed_list
    ]


#: Eval params a sweep sets itself for every run.
SWEEP_SET_EVAL_KEYS = ("run", "store", "out", "device")


def load_sweep_spec(path: str | Path, overrides: dict[str, Any] | list[str] | None = None) -> SweepSpec:
    """Read a sweep spec file, apply overrides (dotted keys of the spec file, as a mapping or ``key=value``
    strings), and check every configuration it expands to.

    Nothing is read from the store here (it may not exist yet in a pipeline); :func:`run_sweep` checks it.
    """
    path = Path(path)
    spec = load_config(SweepSpec, path)
    updates = overrides_mapping(overrides)
    try:
        spec = merge(spec, updates)
    except ConfigError as error:
        unknown = next((key for key in updates if key not in {f.name for f in dataclasses.fields(SweepSpec)}), None)
        hint = f" (an OCL config key of every run goes under set., e.g. set.{moved_key(OCLTrainConfig, unknown) or unknown}=...)" if unknown else ""
        raise ConfigError(f"sweep spec {path}: {error}{hint}") from None
    spec = dataclasses.replace(spec, spec_file=str(path), name=spec.name or path.stem)
    fixed = [key for key in SWEEP_SET_EVAL_KEYS if getattr(spec.eval, key) != getattr(EvalParams(), key)]
    if fixed:
        raise ConfigError(f"{spec.label}: eval.{fixed[0]} is set by the sweep for every run; remove it from the spec")
    expand_configurations(spec)
    return spec


__all__ = [
    "CaseSpec",
    "Configuration",
    "PlannedRun",
    "SweepSpec",
    "config_sha",
    "configuration_id",
    "expand_configurations",
    "expand_runs",
    "load_sweep_spec",
    "resolve_seeds",
]
