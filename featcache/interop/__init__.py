"""Weights from other codebases: name mappings from official checkpoints onto featcache modules.

Each module maps one official component's state-dict keys (and any layout change) onto the featcache module
that reproduces it; the parity tests in ``tests/test_parity_*.py`` load a fixture of the official module's
weights, inputs and outputs, apply the mapping, and assert that featcache gives the same outputs.
``featcache import-vvo`` uses the same mappings to turn an official VVO checkpoint into a run folder.
"""
