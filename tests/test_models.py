"""The BiLSTM network and its hyperparameters: logits out, a full-sequence backward summary."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lstm_adv.domain.errors import ConfigError
from lstm_adv.models import BiLSTM, Hyperparameters

PARAMS = {
    "hidden_size": 8,
    "num_layers": 1,
    "lstm_activation": "tanh",
    "dropout": 0.0,
    "fc_size": 6,
    "fc_activation": "relu",
    "optimizer": "adam",
    "learning_rate": 0.01,
    "batch_size": 16,
}


def _model(**changes: object) -> BiLSTM:
    torch.manual_seed(0)
    return BiLSTM(Hyperparameters.from_mapping({**PARAMS, **changes}, origin="test")).eval()


def test_output_is_logits_of_two_classes() -> None:
    """The model returns (N, 2) raw logits: no softmax module, rows do not sum to one."""
    model = _model()
    logits = model(torch.rand(5, 48, 19))
    assert logits.shape == (5, 2)
    assert not any(isinstance(m, nn.Softmax | nn.LogSoftmax) for m in model.modules())
    assert not torch.allclose(logits.sum(dim=1), torch.ones(5))


def test_backward_half_of_summary_depends_on_first_step() -> None:
    """Perturbing time step 0 changes the backward half of the summary vector (it read the whole sequence)."""
    model = _model()
    x = torch.rand(3, 48, 19)
    changed = x.clone()
    changed[:, 0, :] += 0.5
    with torch.no_grad():
        before, after = model.summary(x), model.summary(changed)
    assert not torch.allclose(before[:, 8:], after[:, 8:])


def test_backward_half_is_the_final_state_of_the_reversed_pass() -> None:
    """The backward half equals the backward direction's state after reading from the last step back to step 0."""
    model = _model()
    x = torch.rand(2, 48, 19)
    with torch.no_grad():
        output, _ = model.lstm(x)
        summary = model.summary(x)
    assert torch.allclose(summary[:, 8:], output[:, 0, 8:])
    assert torch.allclose(summary[:, :8], output[:, -1, :8])


def test_forward_half_ignores_nothing_after_the_last_step() -> None:
    """The forward half depends on the last time step."""
    model = _model()
    x = torch.rand(2, 48, 19)
    changed = x.clone()
    changed[:, -1, :] += 0.5
    with torch.no_grad():
        assert not torch.allclose(model.summary(x)[:, :8], model.summary(changed)[:, :8])


@pytest.mark.parametrize("layers", [1, 3])
def test_summary_uses_the_top_layer(layers: int) -> None:
    """With stacked layers the summary is the top layer's two final states: shape (N, 2h)."""
    model = _model(num_layers=layers, dropout=0.2)
    with torch.no_grad():
        output, _ = model.lstm(torch.zeros(1, 48, 19))
        summary = model.summary(torch.zeros(1, 48, 19))
    assert summary.shape == (1, 16)
    assert torch.allclose(summary[:, 8:], output[:, 0, 8:])
    assert model.lstm.dropout == (0.2 if layers > 1 else 0.0)


def test_relu_summary_activation_is_non_negative() -> None:
    """The chosen LSTM activation (ReLU here) is applied to the summary vector before the dense layers."""
    model = _model(lstm_activation="relu")
    assert isinstance(model.head[0], nn.ReLU)
    assert isinstance(_model(lstm_activation="tanh").head[0], nn.Tanh)
    torch.manual_seed(0)
    x = torch.rand(16, 48, 19)
    summary = model.summary(x)
    activated = model.head[0](summary)
    assert (summary < 0).any()  # the LSTM's own output is tanh-bounded and takes negative values
    assert (activated >= 0).all()
    assert torch.equal(activated, summary.clamp(min=0))


def test_unknown_optimizer_is_a_config_error() -> None:
    """An unknown optimizer name is rejected with the options named."""
    with pytest.raises(ConfigError) as info:
        Hyperparameters.from_mapping({**PARAMS, "optimizer": "adamw"}, origin="params file p.json")
    assert str(info.value) == (
        "params file p.json: Hyperparameters.optimizer must be one of adam, rmsprop, sgd; got 'adamw'"
    )


def test_unknown_and_missing_keys_are_config_errors() -> None:
    """Unknown and missing hyperparameters are named."""
    with pytest.raises(ConfigError, match="unknown hyperparameter\\(s\\) hidden"):
        Hyperparameters.from_mapping({**PARAMS, "hidden": 3}, origin="x")
    partial = dict(PARAMS)
    del partial["fc_size"]
    with pytest.raises(ConfigError, match="missing hyperparameter\\(s\\) fc_size"):
        Hyperparameters.from_mapping(partial, origin="x")


def test_hyperparameters_round_trip() -> None:
    """to_dict and from_mapping are inverse."""
    params = Hyperparameters.from_mapping(PARAMS, origin="x")
    assert Hyperparameters.from_mapping(params.to_dict(), origin="x") == params
