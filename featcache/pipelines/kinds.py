"""Pipeline stage kinds: the declared operations (featcache.operations), one kind per operation.

Nothing is declared here: a stage's params are its operation's params dataclass, checked by the same
typed merge; which params are input paths, config files, outputs or runtime choices comes from each
field's declared role.
"""

from __future__ import annotations

from pathlib import Path

from featcache.operations import Operation
from featcache.provenance import file_sha256
from featcache.registry import Registry
from featcache.stages.analyze import ANALYZE_CODES, ANALYZE_SEPARABILITY, ANALYZE_SLOTS
from featcache.stages.encode_slots import ENCODE_SLOTS
from featcache.stages.evaluate import EVAL
from featcache.stages.extract import EXTRACT
from featcache.stages.import_vvo import IMPORT_VVO
from featcache.stages.probe import PROBE_SET_PREDICTION
from featcache.stages.show import SHOW
from featcache.stages.synth import SYNTH
from featcache.stages.tokenize import TOKENIZE
from featcache.stages.train_ocl import TRAIN_OCL
from featcache.stages.train_vq import TRAIN_VQ
from featcache.stages.verify import VERIFY
from featcache.sweeps.operations import REPORT, SWEEP

#: Every operation, in the order a typical pipeline runs them (the command line lists them in this order too).
ALL_OPERATIONS: tuple[Operation, ...] = (
    SYNTH, EXTRACT, TRAIN_VQ, TOKENIZE, TRAIN_OCL, EVAL, ANALYZE_CODES, ANALYZE_SEPARABILITY, IMPORT_VVO, SWEEP, REPORT,
    VERIFY, ENCODE_SLOTS, PROBE_SET_PREDICTION, ANALYZE_SLOTS, SHOW,
)

STAGE_KINDS = Registry[Operation]("stage kind")
for _operation in ALL_OPERATIONS:
    if _operation.pipeline:
        STAGE_KINDS.register(_operation.name, _operation)


def file_hashes(paths: list[str]) -> dict[str, str]:
    """sha256 of each existing input file (recorded with the stage; missing files are named, not hashed)."""
    return {path: file_sha256(Path(path)) if Path(path).is_file() else "missing" for path in paths}


__all__ = ["ALL_OPERATIONS", "STAGE_KINDS", "file_hashes"]
