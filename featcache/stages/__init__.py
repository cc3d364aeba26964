"""Stages that read a store and produce results: VQ pre-training, tokenizing, OCL training, evaluation."""
