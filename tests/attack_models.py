"""Small seeded models with the mortality model's interface, for the attack tests. Shape: (N, 48, 19) → (N, 2)."""

from __future__ import annotations

import torch
from torch import nn


class TinyLSTM(nn.Module):
    """A bidirectional LSTM (hidden 8 by default) → Linear(2h → 2); dropout active only in training mode."""

    def __init__(self, *, hidden: int = 8, layers: int = 1, dropout: float = 0.0, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.lstm = nn.LSTM(
            19, hidden, num_layers=layers, batch_first=True, bidirectional=True, dropout=dropout if layers > 1 else 0.0
        )
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(2 * hidden, 2)
        self.modes_seen: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits. Shape: (N, 48, 19) → (N, 2)."""
        self.modes_seen.append(self.training)
        _, (h_n, _) = self.lstm(x)
        logits: torch.Tensor = self.head(self.dropout(torch.cat((h_n[-2], h_n[-1]), dim=1)))
        return logits


class LinearModel(nn.Module):
    """z = W·vec(x) + b: the margin is linear in δ, so the attack can be checked against a closed computation."""

    def __init__(self, *, seed: int = 0, scale: float = 0.05) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.weight = nn.Parameter(torch.randn(2, 48 * 19, generator=generator) * scale)
        self.bias = nn.Parameter(torch.zeros(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits. Shape: (N, 48, 19) → (N, 2)."""
        return x.reshape(len(x), -1) @ self.weight.T + self.bias


class TinyMLP(nn.Module):
    """vec(x) → Linear(912 → 16) → tanh → Linear(16 → 2), computed in float64 (input and gradient stay float32).

    Batched and single-sample runs of it differ by far less than float32 reduction-order noise, so it
    checks the attack's per-sample independence even for Adam, whose normalisation amplifies that noise.
    """

    def __init__(self, *, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Sequential(nn.Linear(48 * 19, 16), nn.Tanh(), nn.Linear(16, 2)).double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (float64). Shape: (N, 48, 19) → (N, 2)."""
        logits: torch.Tensor = self.net(x.reshape(len(x), -1).double())
        return logits
