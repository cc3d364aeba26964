"""Operations declared once: a typed params dataclass per operation, and the call that does its work.

Every operation featcache offers (``synth``, ``extract``, ``train-vq``, ``tokenize``, ``train-ocl``, ``eval``,
``analyze codes``, ``analyze separability``, ``import-vvo``, ``sweep``, ``report``) is one :class:`Operation`
next to its library function. Its params dataclass says what it takes; each field's :func:`param` metadata
says how the field is used (an input path, a config file, an output, a runtime choice, ...). The command
line (``featcache.cli``) and the pipeline stage kinds (``featcache.pipelines``) are generated from these
declarations, so an option exists everywhere or nowhere; sweeps evaluate with the eval operation's params.

Declaration modules stay light (no torch at import): ``featcache --help`` builds every command from them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import MISSING, dataclass
from pathlib import Path
from typing import Any, Literal, get_origin, get_type_hints

from featcache.config import flatten_keys, load_config, merge, nest_keys, parse_overrides, to_dict
from featcache.errors import ConfigError
from featcache.registry import Registry

#: How an operation uses a param:
#: ``value``: what it computes with (fingerprinted); ``input``: path(s) of inputs (made absolute in pipelines);
#: ``config``: config file(s), layered in order (fingerprinted by their resolved values); ``set``: ``dotted.key``
#: overrides of that config (``--set key=value`` on the command line, a mapping in pipeline files);
#: ``out``: the path it writes; ``runtime``: how it runs, not what it writes (device, workers, batch sizes: left
#: out of fingerprints); ``cli``: command-line only choices a pipeline makes itself (``--resume``, ``--overwrite``).
Role = Literal["value", "input", "config", "set", "out", "runtime", "cli"]
ROLES: tuple[str, ...] = ("value", "input", "config", "set", "out", "runtime", "cli")


def param(
    default: Any = MISSING,
    *,
    help: str,
    role: Role = "value",
    required: bool = False,
    flag: str | None = None,
    argument: bool = False,
    default_factory: Any = MISSING,
) -> Any:
    """A params field with its help text and role; ``required`` params must be given (non-empty).

    ``flag`` renames the command-line option (default ``--field-name``); ``argument`` makes it positional.
    """
    if role not in ROLES:
        raise ValueError(f"unknown param role {role!r}; valid: {', '.join(ROLES)}")
    metadata = {"help": help, "role": role, "required": required, "flag": flag, "argument": argument}
    if default_factory is not MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


@dataclass(frozen=True)
class ParamInfo:
    """One declared param, as the generated views read it."""

    name: str
    type: Any
    default: Any
    help: str
    role: str
    required: bool
    flag: str
    argument: bool


def params_of(params_type: type) -> list[ParamInfo]:
    """The declared params of an operation's params dataclass, in field order."""
    hints = get_type_hints(params_type)
    infos = []
    for field in dataclasses.fields(params_type):
        meta = field.metadata
        if "role" not in meta:
            raise TypeError(f"{params_type.__name__}.{field.name} is not declared with featcache.operations.param()")
        default = field.default if field.default is not MISSING else field.default_factory()  # type: ignore[misc]
        flag = meta["flag"] or "--" + field.name.replace("_", "-")
        infos.append(ParamInfo(field.name, hints[field.name], default, meta["help"], meta["role"], meta["required"], flag, meta["argument"]))
    return infos


def names_with_role(params_type: type, *roles: str) -> tuple[str, ...]:
    return tuple(info.name for info in params_of(params_type) if info.role in roles)


def config_files(value: Any) -> list[str]:
    """A ``config`` param's files: one path, a list of paths, or none."""
    return [] if not value else [value] if isinstance(value, (str, Path)) else [str(item) for item in value]


def overrides_mapping(value: Any) -> dict[str, Any]:
    """A ``set`` param as a nested mapping: from a mapping (pipeline files) or ``key=value`` strings (CLI)."""
    if not value:
        return {}
    if isinstance(value, dict):
        return nest_keys(flatten_keys(value))
    return parse_overrides([str(item) for item in value])



class Operation:
    """One operation: typed params in, files written, a one-line note about what was done.

    Subclasses set ``name`` and ``params_type`` and implement :meth:`run`; the other hooks describe, for the
    pipeline engine, what the operation writes and how a stale output is replaced.
    """

    name: str = ""
    params_type: type = object
    #: Words of the command (default: the name), e.g. ``("analyze", "codes")``.
    command: tuple[str, ...] = ()
    #: Fields of the typed config that the command line also offers as options of their own (``extract --vfm``),
    #: field name -> help; on the command line they are a shorthand for ``--set field=value``.
    config_options: dict[str, str] = {}
    #: A pipeline stage writes the path in its ``out`` param (default ``<workdir>/<stage name><out_suffix>``).
    writes_out: bool = True
    out_suffix: str = ""
    #: An existing output not written by the pipeline is handed to the operation, which resumes or refuses it.
    adopts_existing: bool = False
    #: How a stage's own earlier output is replaced when its inputs changed: set aside (``move``) or rewritten in place.
    replace: Literal["move", "overwrite"] = "move"
    #: Offered as a pipeline stage kind.
    pipeline: bool = True

    # ------------------------------------------------------------------ the declaration
    @property
    def words(self) -> tuple[str, ...]:
        return self.command or (self.name,)

    @property
    def help(self) -> str:
        return (type(self).__doc__ or "").strip()

    def params(self) -> list[ParamInfo]:
        return params_of(self.params_type)

    def roles(self, *roles: str) -> tuple[str, ...]:
        return names_with_role(self.params_type, *roles)

    def make_params(self, values: dict[str, Any]) -> Any:
        """Typed params from a mapping (unknown keys and wrong types fail naming the key); a ``config`` param may
        name one file instead of a list."""
        lists = {name for name, hint in get_type_hints(self.params_type).items() if get_origin(hint) is list}
        values = {key: [value] if key in lists and key in self.roles("config") and isinstance(value, str) else value
                  for key, value in values.items()}
        return merge(self.params_type(), values)

    # ------------------------------------------------------------------ the typed config a config/set pair names
    def config_class(self) -> type | None:
        """The typed config built from the ``config`` files and ``set`` overrides (None: the operation has none)."""
        return None

    def typed_config(self, params: Any) -> Any:
        """Defaults, then the config file(s) in order, then the ``set`` overrides (unknown keys fail)."""
        cls = self.config_class()
        if cls is None:
            return None
        config = load_config(cls, config_files(self._field(params, "config")))
        updates = overrides_mapping(self._field(params, "set"))
        return merge(config, updates) if updates else config

    @staticmethod
    def _field(params: Any, role: str) -> Any:
        names = names_with_role(type(params), role)
        return getattr(params, names[0]) if names else None

    # ------------------------------------------------------------------ pipeline hooks
    def validate(self, params: Any) -> None:
        """Check params and the typed config they name (raises ConfigError); called before anything runs."""
        for info in self.params():
            if info.required and getattr(params, info.name) in ("", None, [], ()):
                raise ConfigError(f"param {info.name!r} is required ({info.help[:1].lower() + info.help[1:]})")
        self.typed_config(params)

    def outputs(self, params: Any) -> dict[str, str]:
        return {"out": params.out}

    def owned(self, params: Any) -> list[str]:
        """Paths this operation creates (checked for clashes, set aside when stale)."""
        return [params.out]

    def outputs_exist(self, params: Any) -> bool:
        return all(Path(path).exists() for path in self.owned(params))

    def fingerprint_data(self, params: Any) -> dict[str, Any]:
        """What the output depends on: params minus runtime and command-line-only ones; config files and
        overrides by the resolved config's values (renaming a file changes nothing; a trained run or a store does
        not depend on where it is written, so then ``out`` is left out too)."""
        data = {key: value for key, value in to_dict(params).items() if key not in self.roles("runtime", "cli", "config", "set")}
        config = self.typed_config(params)
        if config is not None:
            for name in self.roles("out"):
                data.pop(name, None)
            data["config"] = to_dict(config)
        return data

    def input_files(self, params: Any) -> list[str]:
        """Files whose bytes are recorded with the stage (its config files)."""
        return [path for name in self.roles("config") for path in config_files(getattr(params, name))]

    # ------------------------------------------------------------------ the work
    def run(self, params: Any, resume: bool = False, show_progress: bool = True) -> str:
        """Do the work (printing what a user wants to see); returns a one-line note for status tables."""
        raise NotImplementedError


#: Every declared operation, by name (filled as the declaring modules are imported: see featcache.pipelines.kinds).
OPERATIONS = Registry[Operation]("operation")


def declare(operation: Operation) -> Operation:
    """Register ``operation`` (checking its params are all declared with :func:`param`)."""
    params_of(operation.params_type)
    OPERATIONS.register(operation.name, operation)
    return operation


__all__ = ["OPERATIONS", "Operation", "ParamInfo", "config_files", "declare", "names_with_role", "overrides_mapping", "param", "params_of"]
