"""The bidirectional LSTM classifier. Networks only: no training, no I/O."""

from __future__ import annotations

import torch
from torch import nn

from lstm_adv.domain.shapes import N_CLASSES, N_FEATURES
from lstm_adv.models.hyperparameters import Hyperparameters


def _activation(name: str) -> nn.Module:
    return nn.ReLU() if name == "relu" else nn.Tanh()


class BiLSTM(nn.Module):
    """BiLSTM(19 → h, bidirectional) → summary → activation → dropout → Linear(2h → f) → activation → Linear(f → 2).

    The summary vector concatenates the forward direction's hidden state after the last time step
    with the backward direction's final hidden state, i.e. after it has read the sequence from the
    last step back to step 0 — so it depends on every time step. ``nn.LSTM`` only
    implements tanh gates, so the tuned "LSTM activation" (ReLU/Tanh) is applied to the summary
    vector. The output is raw **logits**; there is no softmax inside the model.
    """

    def __init__(self, params: Hyperparameters, *, n_features: int = N_FEATURES) -> None:
        super().__init__()
        self.params = params
        self.lstm = nn.LSTM(
            n_features,
            params.hidden_size,
            num_layers=params.num_layers,
            batch_first=True,
            bidirectional=True,
            dropout=params.dropout if params.num_layers > 1 else 0.0,
        )
        self.head = nn.Sequential(
            _activation(params.lstm_activation),
            nn.Dropout(params.dropout),
            nn.Linear(2 * params.hidden_size, params.fc_size),
            _activation(params.fc_activation),
            nn.Linear(params.fc_size, N_CLASSES),
        )

    def summary(self, x: torch.Tensor) -> torch.Tensor:
        """The summary vector [forward final ‖ backward final] of the last layer. Shape: (N, 48, 19) → (N, 2h)."""
        _, (h_n, _) = self.lstm(x)
        # h_n is (layers * 2, N, h): the last two rows are the top layer's forward and backward states.
        return torch.cat((h_n[-2], h_n[-1]), dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of classes (survived, died). Shape: (N, 48, 19) → (N, 2)."""
        logits: torch.Tensor = self.head(self.summary(x))
        return logits
