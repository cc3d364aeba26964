"""Benchmarks that measure featcache against its baselines side by side in one run."""
