"""The operations: one module per operation with its declared params and the call that does its work.

synth, extract, train_vq, tokenize, train_ocl, evaluate, analyze (codes, separability), import_vvo and verify; the sweep
and report operations are declared in :mod:`featcache.sweeps.operations`. Modules here import no torch at import
time (the mechanics live in :mod:`featcache.training`, :mod:`featcache.extraction` and :mod:`featcache.analysis`).
"""
