"""Loading the parity fixtures: official modules' weights, inputs and outputs saved as safetensors.

A fixture ``tests/fixtures/parity/NAME.safetensors`` holds tensors under three prefixes: ``weights.`` (the
official module's state dict, official key names), ``input.`` and ``output.`` (and ``grad.`` where a test
checks one training step's gradients). Its metadata names the official repository, commit, file and class and
the module's constructor arguments, so a reader can regenerate it from the official code.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open

FIXTURES = Path(__file__).parent / "fixtures" / "parity"


def load_fixture(name: str) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, str]]:
    """(tensors by prefix, metadata): ``tensors["weights"]["proj_q.weight"]``, ``tensors["output"]["slots"]``..."""
    path = FIXTURES / f"{name}.safetensors"
    groups: dict[str, dict[str, torch.Tensor]] = {"weights": {}, "input": {}, "output": {}, "grad": {}}
    with safe_open(str(path), framework="pt") as handle:
        metadata = dict(handle.metadata() or {})
        for key in handle.keys():
            prefix, _, rest = key.partition(".")
            groups.setdefault(prefix, {})[rest] = handle.get_tensor(key)
    return groups, metadata


def fixture_config(metadata: dict[str, str]) -> dict:
    """The official module's constructor arguments recorded in the fixture (metadata key ``config``, JSON)."""
    return json.loads(metadata.get("config", "{}"))


def assert_close(actual: torch.Tensor, expected: torch.Tensor, atol: float = 1e-5, rtol: float = 1e-5, what: str = "") -> None:
    """float32 equality up to ~1e-5, with the max |diff| in the message."""
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    diff = (actual.detach().float() - expected.float()).abs().max().item() if actual.numel() else 0.0
    assert torch.allclose(actual.detach().float(), expected.float(), atol=atol, rtol=rtol), f"{what}: max |diff| {diff:.3e}"
