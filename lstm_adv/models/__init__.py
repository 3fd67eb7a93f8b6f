"""Networks: the BiLSTM classifier and its hyperparameters."""

from lstm_adv.models.bilstm import N_CLASSES, N_FEATURES, BiLSTM
from lstm_adv.models.hyperparameters import ACTIVATIONS, OPTIMIZERS, Hyperparameters

__all__ = ["ACTIVATIONS", "N_CLASSES", "N_FEATURES", "OPTIMIZERS", "BiLSTM", "Hyperparameters"]
