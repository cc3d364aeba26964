"""`featcache train-ocl` and `featcache eval`: object-centric training from cached features and tokens.

Only the projection, the aggregator (Slot Attention / BO-QSA) and the decoder train; VFM features and
VQ tokens come from the store (or, with ``--online``, are recomputed from the images every step as public
code does). One config object (``OCLTrainConfig``) is saved with every checkpoint and is what ``eval``
rebuilds the model from.
"""

from __future__ import annotations



