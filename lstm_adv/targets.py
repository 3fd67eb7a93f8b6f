"""What an attack is aimed at: the model (a model run, or a trial of a tune-model run), the features
run it was trained on, and the cells it may change.

Shared by the stages that attack a model (tune-attack, attack), so none of them imports another.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs
import numpy as np

from lstm_adv.config import AttackConfig
from lstm_adv.domain.errors import ConfigError, DataError, RunKindError
from lstm_adv.domain.features import FeatureSpec
from lstm_adv.domain.run_id import RunId
from lstm_adv.results import artifacts
from lstm_adv.results.store import Run, RunStore
from lstm_adv.results.summaries import TuneModelSummary

if TYPE_CHECKING:
    import torch
    from torch import nn


@attrs.frozen
class AttackTarget:
    """The model under attack: a model run, or trial ``trial`` of a tune-model run, and its features run."""

    model_run: Run
    trial: int | None
    features_run: Run

    def load_model(self, device: torch.device) -> nn.Module:
        """The trained BiLSTM, in eval mode on ``device`` (its files checked against the run's manifest)."""
        if self.trial is None:
            return artifacts.load_trained_model(self.model_run, device=device)
        return artifacts.load_run_model(self.model_run, self.trial, device=device)


def resolve_target(store: RunStore, run: Run, trial: int | None = None) -> AttackTarget:
    """A model run (``trial`` must be ``None``) or a tune-model run's trial (default: its best) as a target."""
    if run.kind == "model":
        if trial is not None:
            raise ConfigError(f"--trial selects a trial of a tune-model run; run {run.id} is a model run")
        if artifacts.is_cv_run(run):
            raise DataError(f"model run {run.id} is a cross-validation run; train without --cv to get one model")
        return AttackTarget(run, None, store.get(str(run.manifest.parents[0]), kind="features"))
    if run.kind == "tune-model":
        number, _params = artifacts.trial_params(run, trial)
        features_run = store.get(str(run.summary_as(TuneModelSummary).features_run), kind="features")
        return AttackTarget(run, number, features_run)
    raise RunKindError(
        f"run {run.id} is a {run.kind} run; --model needs a model run (or a tune-model run with --trial)"
    )


def target_from(store: RunStore, model_run: RunId, trial: int | None, features_run: RunId) -> AttackTarget:
    """The target a tuning or attack run recorded (its model run, trial and features run)."""
    return AttackTarget(store.get(str(model_run)), trial, store.get(str(features_run), kind="features"))


def attack_mask(config: AttackConfig, spec: FeatureSpec) -> np.ndarray | None:
    """The (48, 19) cell mask of ``[attack] features`` and ``hours`` (``None`` = every cell). Shape: (48, 19).

    ``features`` names features or sources (``lab``, ``vital``, ``bloodgas``) of ``spec``.
    """
    from lstm_adv.attacks import cell_mask

    sources = {f.source for f in spec.features}
    unknown = [n for n in config.features if n not in spec.names and n not in sources]
    if unknown:
        raise ConfigError(
            f"attack.features: unknown feature or source {unknown!r}; use names from the feature definitions "
            f"or one of {', '.join(sorted(sources))}"
        )
    first, last = config.hours
    if not config.features and (first, last) == (0, 48):
        return None
    chosen = [i for i, f in enumerate(spec.features) if f.name in config.features or f.source in config.features]
    return cell_mask(features=chosen if config.features else None, hours=range(first, last))


def features_run_of(store: RunStore, model_run: Run) -> Run:
    """The features run a model run was trained on (a defended model: through its original model)."""
    for parent in model_run.manifest.parents:
        if parent.kind == "features":
            return store.get(str(parent), kind="features")
    for parent in model_run.manifest.parents:
        if parent.kind == "model":
            return features_run_of(store, store.get(str(parent), kind="model"))
    raise DataError(f"model run {model_run.id} names no features run among its parents; retrain it with lstm-adv train")


def check_model_run(run: Run) -> None:
    """A single (non cross-validation) model run, else a clear error."""
    if run.kind != "model":
        raise RunKindError(f"run {run.id} is a {run.kind} run; give a model run (lstm-adv train)")
    if artifacts.is_cv_run(run):
        raise DataError(f"model run {run.id} is a cross-validation run; train without --cv to get one model")
