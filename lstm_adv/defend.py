"""Defense stage: adversarial fine-tuning of a trained model with PGD examples.

``defend_model`` is the service (a trained BiLSTM and its FeatureMatrix in, :class:`DefenseResult`
out); ``run_defense`` writes the result as a run of kind ``model`` whose first parent is the
original model run (and whose second is the features run), with the same files as a model run of
``lstm-adv train`` plus ``defense.json`` — so every later stage takes it like any other model.

- ``static``: examples are generated once, against the given model, for the whole training split;
  every epoch a seeded share ``mix`` of the training samples is replaced by its (fixed) example.
- ``adaptive`` (Madry): fresh examples against the current weights every batch (default) or every epoch for
  that epoch's chosen share.

Examples are generated in eval mode by the attack base; training runs in train mode through the
model stage's own loop (:func:`lstm_adv.training_loop.train_epoch`). Every epoch is scored on the
clean, unresampled validation split; the final weights are kept (choosing a checkpoint by clean
validation would favour the least robust epoch). The threshold is chosen on clean validation and
the test split is scored once, as ``lstm-adv train`` does.
"""

from __future__ import annotations

import logging
import time
from typing import Any, cast

import attrs
import torch

from lstm_adv.attacks.pgd import PgdAttack, PgdSettings
from lstm_adv.config import DEFENSE_METHODS as METHODS
from lstm_adv.config import Config, Decision
from lstm_adv.domain.decision import DecisionRule
from lstm_adv.domain.feature_matrix import FeatureMatrix
from lstm_adv.models import BiLSTM
from lstm_adv.results import artifacts
from lstm_adv.results.config_file import config_as_dict
from lstm_adv.results.store import Run, RunStore
from lstm_adv.results.summaries import DefenseSummary
from lstm_adv.targets import check_model_run, features_run_of
from lstm_adv.train import (
    SplitIndices,
    TrainedModel,
    assess_model,
    check_split,
    holdout_summary,
    oracle_auroc,
    write_trained,
)
from lstm_adv.training_loop import (
    EpochCallback,
    EpochRecord,
    SplitTensors,
    build_optimizer,
    epoch_order,
    loss_function,
    resolve_device,
    train_epoch,
    validation_scores,
)

log = logging.getLogger(__name__)

__all__ = ["METHODS", "DefenseResult", "defend_model", "run_defense"]


@attrs.frozen
class DefenseResult:
    """A defended model (final weights, clean evaluation) and how its training examples were made."""

    trained: TrainedModel
    method: str
    settings: PgdSettings
    regenerations: int
    examples_per_epoch: float


def defense_settings(config: Config) -> PgdSettings:
    """The PGD settings of the training examples (``[defend]`` attack and ε, the rest from ``[pgd]``)."""
    return PgdSettings.from_config(config.pgd, attack=config.defend.attack, eps=config.defend.eps)


@attrs.define
class _Trainer:
    """One fine-tuning: the model, its optimizer and loss, the PGD attack, and the counters."""

    model: BiLSTM
    optimizer: torch.optim.Optimizer
    criterion: torch.nn.Module
    attack: PgdAttack
    train: SplitTensors
    eligible: torch.Tensor
    config: Config
    generator: torch.Generator
    regenerations: int = 0
    used: int = 0

    def chosen(self) -> torch.Tensor:
        """This epoch's seeded share ``mix`` of the attackable training rows. Shape: (n,) bool."""
        draw = torch.rand(self.train.y.shape[0], generator=self.generator).to(self.train.x.device)
        return self.eligible & (draw < self.config.defend.mix)

    def adversarial(self, x: torch.Tensor, y: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """``x`` with the rows ``rows`` replaced by fresh examples against the current weights."""
        self.regenerations += 1
        out = x.clone()
        index = rows.nonzero()[:, 0]
        if index.numel():
            out[index] = x[index] + self.attack.perturb(x[index], y[index])
        return out

    def epoch(self, fixed: torch.Tensor | None) -> float:
        """One training epoch; ``fixed`` holds static examples (None: adaptive). Returns the mean loss."""
        chosen = self.chosen()
        self.used += int(chosen.sum())
        order = epoch_order(self.train.y, self.config.model.imbalance, self.generator)
        batch_size, clip = self.model.params.batch_size, self.config.model.grad_clip_norm
        if fixed is not None or self.config.defend.regenerate == "epoch":
            x = (
                torch.where(chosen[:, None, None], fixed, self.train.x)
                if fixed is not None
                else self.adversarial(self.train.x, self.train.y, chosen)
            )
            split = SplitTensors(x, self.train.y)
            return train_epoch(self.model, self.optimizer, self.criterion, split, batch_size, order=order, clip=clip)
        # Adaptive per batch: each batch's examples are made against the weights of that very step.
        return train_epoch(
            self.model,
            self.optimizer,
            self.criterion,
            self.train,
            batch_size,
            order=order,
            clip=clip,
            transform=lambda x, y, rows: self.adversarial(x, y, chosen[rows]),
        )


def defend_model(
    model: BiLSTM,
    features: FeatureMatrix,
    config: Config,
    *,
    decision: DecisionRule | None = None,
    on_epoch: EpochCallback | None = None,
) -> DefenseResult:
    """Fine-tune ``model`` adversarially on the training split (see the module docstring); the input is not changed.

    The PGD examples are made at ``decision`` (the original model's rule; default argmax); the defended
    model gets a rule of the same kind (``model.decision``), made anew on validation.
    Shape: features.values (N, 48, 19).
    """
    settings = defense_settings(config)
    split = SplitIndices.holdout(features)
    check_split(features, split, origin="FeatureMatrix")
    device = resolve_device(config.model.device)
    torch.manual_seed(config.model.seed)
    tensors = [
        SplitTensors.from_arrays(features.values[i], features.labels[i], device)
        for i in (split.train, split.validation, split.evaluation)
    ]
    trainer = _trainer(_copy_model(model, device), tensors[0], settings, config, decision)
    fixed = None
    if config.defend.method == "static":  # once, against the given weights, for every attackable row
        fixed = trainer.adversarial(tensors[0].x, tensors[0].y, trainer.eligible)
    history = []
    for epoch in range(1, config.defend.epochs + 1):
        started = time.perf_counter()
        train_loss = trainer.epoch(fixed)
        val_loss, val_auroc = validation_scores(trainer.model, tensors[1], config.model.eval_batch_size)
        record = EpochRecord(epoch, train_loss, val_loss, val_auroc, seconds=time.perf_counter() - started)
        log.info("defense epoch %d: train loss %.4f, clean validation AUROC %.4f", epoch, train_loss, val_auroc)
        history.append(record)
        if on_epoch is not None:
            on_epoch(record)
    trainer.model.eval()
    trained = assess_model(
        trainer.model,
        features,
        split,
        tensors,
        history=tuple(history),
        best_epoch=len(history),
        config=config.model,
        device=str(device),
    )
    per_epoch = trainer.used / config.defend.epochs
    return DefenseResult(trained, config.defend.method, settings, trainer.regenerations, per_epoch)


def _copy_model(model: BiLSTM, device: torch.device) -> BiLSTM:
    copy = BiLSTM(model.params).to(device)
    copy.load_state_dict(model.state_dict())
    return copy


def _trainer(
    model: BiLSTM, train: SplitTensors, settings: PgdSettings, config: Config, decision: DecisionRule | None
) -> _Trainer:
    rate = config.defend.learning_rate or model.params.learning_rate
    optimizer = build_optimizer(attrs.evolve(model.params, learning_rate=rate), model)
    eligible = train.y != settings.target if settings.target is not None else torch.ones_like(train.y, dtype=torch.bool)
    attack = PgdAttack(model, settings, decision=decision, device=train.x.device, batch_size=config.pgd.batch_size)
    generator = torch.Generator().manual_seed(config.model.seed)
    return _Trainer(
        model, optimizer, loss_function(train.y, config.model.imbalance), attack, train, eligible, config, generator
    )


def run_defense(store: RunStore, model_run: Run, config: Config, *, on_epoch: EpochCallback | None = None) -> Run:
    """Adversarially fine-tune the model of ``model_run`` and write a new model run; bad input writes no run."""
    check_model_run(model_run)
    settings = defense_settings(config)
    features_run = features_run_of(store, model_run)
    features = artifacts.load_features(features_run)
    check_split(features, SplitIndices.holdout(features), origin=f"features run {features_run.id}")
    model = artifacts.load_trained_model(model_run)
    decision = artifacts.load_decision(model_run)
    config = attrs.evolve(config, model=attrs.evolve(config.model, decision=cast(Decision, decision.rule)))
    oracle = oracle_auroc(store, features_run, features)
    with store.create("model", parents=[model_run.id, features_run.id], config=config_as_dict(config)) as writer:
        result = defend_model(model, features, config, decision=decision, on_epoch=on_epoch)
        write_trained(writer, result.trained)
        defense = defense_record(result, model_run, config)
        artifacts.write_json(writer.file(artifacts.DEFENSE_FILE), defense)
        d = config.defend
        regenerate = d.regenerate if result.method == "adaptive" else "once"
        summary = holdout_summary(features, result.trained, oracle)
        writer.summary = attrs.evolve(
            summary,
            defense=DefenseSummary(
                method=result.method,
                attack=d.attack,
                eps=d.eps,
                epochs=d.epochs,
                mix=d.mix,
                regenerate=regenerate,
                regenerations=result.regenerations,
                original_model=model_run.id,
                batch_size=config.pgd.batch_size,
            ),
            features_run=features_run.id,
        )
    log.info("defense %s with %s examples: %d regenerations", settings.norm, config.defend.method, result.regenerations)
    assert writer.committed is not None
    return writer.committed


def defense_record(result: DefenseResult, model_run: Run, config: Config) -> dict[str, Any]:
    """What ``defense.json`` holds: method, ε, epochs, mix, the attack settings and the regeneration count."""
    d = config.defend
    return {
        "method": result.method,
        "attack": d.attack,
        "eps": d.eps,
        "epochs": d.epochs,
        "mix": d.mix,
        "regenerate": d.regenerate if result.method == "adaptive" else "once",
        "learning_rate": d.learning_rate or result.trained.params.learning_rate,
        "pgd": {**attrs.asdict(result.settings), "alpha": result.settings.alpha},
        "regenerations": result.regenerations,
        "adversarial_samples_per_epoch": result.examples_per_epoch,
        "original_model": str(model_run.id),
    }
