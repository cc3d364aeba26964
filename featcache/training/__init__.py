"""Shared training machinery: cached-batch loader, checkpoints, metrics log."""
