"""`featcache verify`: read every chunk of a store and check everything it records about itself.

The work lives in :mod:`featcache.store.verify`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from featcache.operations import Operation, declare, param


@dataclass(frozen=True)
class VerifyParams:
    store: str = param("", help="A featcache store.", role="input", required=True, argument=True)


class Verify(Operation):
    """Check a store in full: every chunk read (crc32c verified where present), chunk presence, the attributes fingerprint, token sets."""

    name = "verify"
    params_type = VerifyParams
    writes_out = False

    def outputs(self, params: VerifyParams) -> dict[str, str]:
        return {"store": params.store}

    def owned(self, params: VerifyParams) -> list[str]:
        return []  # reads only

    def run(self, params: VerifyParams, resume: bool = False, show_progress: bool = True) -> str:
        from featcache.errors import StoreError
        from featcache.store.verify import print_verify_report, verify_store

        report = verify_store(Path(params.store), show_progress=show_progress)
        print_verify_report(report)
        problems = report.problems
        if problems:
            shown = "; ".join(problems[:3]) + (f"; ... ({len(problems) - 3} more)" if len(problems) > 3 else "")
            raise StoreError(f"store {params.store} failed verification ({len(problems)} problems): {shown}")
        return f"{params.store}: intact ({report.chunks_read} chunks read, every check passed)"


VERIFY = declare(Verify())
