"""The VFM registry as a rich table (`featcache encoders`)."""

from __future__ import annotations

from rich.table import Table

from featcache.console import console


def print_encoders() -> None:
    """The VFM registry with each entry's default config."""
    from featcache.encoders import list_encoders

    table = Table(title="VFM encoders")
    for column in ("name", "timm model", "hub tag", "stride", "default px", "channels", "stored", "derivable"):
        table.add_column(column, no_wrap=True)
    for spec in list_encoders():
        table.add_row(
            spec.name,
            spec.timm_name,
            spec.hub_tag,
            str(spec.patch_size),
            str(spec.default_resolution),
            str(spec.channels),
            spec.stored_kind,
            ", ".join(spec.derivable_kinds) or "-",
        )
    console.print(table)
