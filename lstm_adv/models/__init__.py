"""Networks: the BiLSTM classifier and its hyperparameters.

``BiLSTM`` is imported on first use, so that reading hyperparameters (run summaries, the CLI)
does not import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lstm_adv.models.hyperparameters import ACTIVATIONS, OPTIMIZERS, Hyperparameters

if TYPE_CHECKING:
    from lstm_adv.models.bilstm import BiLSTM

__all__ = ["ACTIVATIONS", "OPTIMIZERS", "BiLSTM", "Hyperparameters"]


def __getattr__(name: str) -> Any:
    if name == "BiLSTM":
        from lstm_adv.models.bilstm import BiLSTM

        return BiLSTM
    raise AttributeError(f"module 'lstm_adv.models' has no attribute {name!r}")
