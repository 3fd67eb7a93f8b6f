"""The shapes every model input and perturbation shares (and the split names' aliases), defined once.

A sample is 48 hourly steps of 19 features; the model scores 2 classes (0 survived, 1 died).
"""

from __future__ import annotations

N_HOURS = 48
N_FEATURES = 19
N_CLASSES = 2
CELL_SHAPE = (N_HOURS, N_FEATURES)
N_CELLS = N_HOURS * N_FEATURES
#: Short names accepted for a split wherever one is named (``val`` → ``validation``).
SPLIT_ALIASES = {"val": "validation"}
