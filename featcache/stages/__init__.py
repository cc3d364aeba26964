"""Stages that read a store and produce results: VQ pre-training, tokenizing (later: OCL training, evaluation)."""
