"""`featcache tokenize`: a VQ run's token indices (uint16) for every view, written into the store with the projected codebook.

The work (resumable by unit) lives in :mod:`featcache.training.tokenize`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from featcache.operations import Operation, declare, param


@dataclass(frozen=True)
class TokenizeParams:
    store: str = param("", help="A complete feature store.", role="input", required=True)
    vq: str = param("", help="A train-vq run folder.", role="input", required=True)
    name: str = param("", help="Name of the token set in the store (several may coexist).", required=True)
    batch_size: int = param(256, help="Views per forward pass.", role="runtime")
    device: str = param("auto", help="auto | cpu | cuda", role="runtime")
    overwrite: bool = param(False, help="Replace an existing token set of this name.", role="cli")


class Tokenize(Operation):
    """Write the VQ run's token indices (uint16) for every view into the store, with the projected codebook."""

    name = "tokenize"
    params_type = TokenizeParams
    writes_out = False

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

    def run(self, params: TokenizeParams, resume: bool = False, show_progress: bool = True) -> str:
        from featcache.training.tokenize import tokenize_store

        summary = tokenize_store(params.store, params.vq, params.name, overwrite=params.overwrite, batch_size=params.batch_size,
                                 device=params.device, show_progress=show_progress)
        return (
            f"{params.store}: token set {summary.name!r} ({summary.codebook_size} codes), {summary.units_run} of {summary.units_total} units "
            f"written in {summary.seconds:.1f} s"
        )


TOKENIZE = declare(Tokenize())
