"""`featcache train-vq`: pre-train the VVO quantizer from cached features (or online, as the baseline).

Adam with warm-up + cosine, gradient clipping, bf16 autocast on CUDA, seeds, periodic checkpoints and
exact ``--resume`` (weights, optimizer, random generators and the batch sampler are all saved), a metrics
log with code usage, and a PNG of image reconstructions at the end.
"""

from __future__ import annotations

