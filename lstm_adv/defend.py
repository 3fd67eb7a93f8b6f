"""Defense stage: adversarial fine-tuning of a trained model with PGD or sparse L1 examples.

``defend_model`` is the service (a trained BiLSTM and its FeatureMatrix in, :class:`DefenseResult`
out); ``run_defense`` writes the result as a run of kind ``model`` whose first parent is the
original model run (and whose second is the features run; method ``l1`` adds the tune-attack run
whose settings made its examples), with the same files as a model run of ``lstm-adv train`` plus
``defense.json`` — so every later stage takes it like any other model.

- ``static``: PGD examples are generated once, against the given model, for the whole training
  split; every epoch a seeded share ``mix`` of the training samples is replaced by its (fixed) example.
- ``adaptive`` (Madry): fresh PGD examples against the current weights every batch (default) or
  every epoch for that epoch's chosen share. With ``loss = trades`` (Zhang et al. 2019) every sample
  is trained on CE(clean) + β·KL(p(x) ‖ p(x')), x' the PGD maximizer of that KL.
- ``l1``: fresh sparse L1 examples (the tuned attack of the original model, with a bounded budget,
  on the cells ``attack.cells`` allows) against the current weights every batch or epoch; a sample
  the attack does not flip (or does not attack: misclassified, no allowed cell) stays clean.

Examples are generated in eval mode by the attack base; training runs in train mode through the
model stage's own loop (:func:`lstm_adv.training_loop.train_epoch`). Every epoch is scored on the
clean, unresampled validation split and, on a seeded subset of it, under the defense's own attack
against the current weights (robust accuracy at the rule the current weights would be stored with, made
on clean validation each epoch as ``lstm-adv train`` makes it, so that the last epoch's figure agrees with
``lstm-adv robustness`` on the stored model; TensorBoard and ``defense.json``); the final weights are
kept (choosing a checkpoint by clean validation would favour the least robust epoch). The threshold is
chosen on clean validation and the test split is scored once, as ``lstm-adv train`` does.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Literal, cast

import attrs
import numpy as np
import torch
from numpy.typing import NDArray

from lstm_adv import metrics
from lstm_adv.attacks.l1 import L1Attack, L1Settings
from lstm_adv.attacks.pgd import PgdAttack, PgdSettings
from lstm_adv.attacks.threats import SampleInputs
from lstm_adv.attacks.trades import trades_loss
from lstm_adv.config import DEFENSE_METHODS as METHODS
from lstm_adv.config import Config, Decision
from lstm_adv.domain.decision import DecisionRule
from lstm_adv.domain.errors import ConfigError, DataError
from lstm_adv.domain.feature_matrix import FeatureMatrix
from lstm_adv.models import BiLSTM
from lstm_adv.results import artifacts
from lstm_adv.results.config_file import config_as_dict
from lstm_adv.results.store import Run, RunStore
from lstm_adv.results.summaries import DefenseSummary
from lstm_adv.targets import (
    AttackSurface,
    attack_surface,
    check_model_run,
    features_run_of,
    l1_attack,
    pgd_attack,
    trades_attack,
    tuned_attack_of,
    tuned_settings,
)
from lstm_adv.train import (
    REPORTED,
    SplitIndices,
    TrainedModel,
    assess_model,
    check_split,
    holdout_summary,
    oracle_auroc,
    write_trained,
)
from lstm_adv.training_loop import (
    BatchTransform,
    EpochCallback,
    EpochRecord,
    SplitTensors,
    build_optimizer,
    epoch_order,
    epoch_scalars,
    loss_function,
    predict_logits,
    probabilities,
    resolve_device,
    summary_writer,
    train_epoch,
    validation_scores,
    write_hparams,
)

log = logging.getLogger(__name__)

__all__ = ["METHODS", "DefenseResult", "SparseTraining", "defend_model", "run_defense"]

ExampleAttack = PgdAttack | L1Attack


@attrs.frozen
class SparseTraining:
    """What method ``l1`` needs besides the config: the L1 attack's settings (tuned κ, λ, step, method with the
    bounded budget) and its surface (the threat of ``[attack]`` and each row's record or measured cells)."""

    settings: L1Settings
    surface: AttackSurface = attrs.field(eq=False)
    batch_size: int | Literal["auto"] = "auto"


@attrs.frozen
class DefenseResult:
    """A defended model (final weights, clean evaluation) and how its training examples were made.

    ``robust_accuracy`` holds, per epoch, the monitored validation samples' accuracy under the
    defense's attack (empty when not monitored); ``seconds`` the fine-tuning's wall time (example
    generation included, monitoring not).
    """

    trained: TrainedModel
    method: str
    settings: PgdSettings | L1Settings
    regenerations: int
    examples_per_epoch: float
    seconds: float = 0.0
    robust_accuracy: tuple[float, ...] = ()


def defense_settings(config: Config) -> PgdSettings:
    """The PGD settings of the training examples (``[defend]`` attack and ε, the rest from ``[pgd]``)."""
    return PgdSettings.from_config(config.pgd, attack=config.defend.attack, eps=config.defend.eps)


@attrs.define
class _Trainer:
    """One fine-tuning: the model, its optimizer and loss, the example attack, and the counters."""

    model: BiLSTM
    optimizer: torch.optim.Optimizer
    criterion: torch.nn.Module
    attack: ExampleAttack
    train: SplitTensors
    inputs: SampleInputs | None  # per training sample, the L1 threat's record or allowed cells (method l1)
    eligible: torch.Tensor
    config: Config
    generator: torch.Generator
    regenerations: int = 0
    used: int = 0

    def chosen(self) -> torch.Tensor:
        """This epoch's seeded share ``mix`` of the attackable training rows (TRADES: all). Shape: (n,) bool."""
        draw = torch.rand(self.train.y.shape[0], generator=self.generator).to(self.train.x.device)
        if self.config.defend.loss == "trades":
            return self.eligible.clone()
        return self.eligible & (draw < self.config.defend.mix)

    def adversarial(self, x: torch.Tensor, y: torch.Tensor, chosen: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """``x`` with the ``chosen`` rows replaced by fresh examples against the current weights.

        ``rows`` are x's row indices into the training split. Shapes: x (B, 48, 19), chosen (B,), rows (B,).
        """
        self.regenerations += 1
        out = x.clone()
        index = chosen.nonzero()[:, 0]
        if index.numel():
            out[index] = x[index] + self.perturb(x[index], y[index], rows[index])
        return out

    def perturb(self, x: torch.Tensor, y: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """δ against the current weights: PGD (or TRADES' KL PGD), or the sparse attack on each row's cells."""
        if isinstance(self.attack, L1Attack):
            part = SampleInputs() if self.inputs is None else self.inputs.take(rows)
            return self.attack.perturb(x, y, part.allowed, record=part.record, example=self.config.defend.l1_example)
        return self.attack.perturb(x, y)

    def epoch(self, fixed: torch.Tensor | None) -> float:
        """One training epoch; ``fixed`` holds static examples (None: fresh ones). Returns the mean loss."""
        chosen = self.chosen()
        self.used += int(chosen.sum())
        order = epoch_order(self.train.y, self.config.model.imbalance, self.generator)
        if fixed is not None or self.config.defend.regenerate == "epoch":
            every = torch.arange(self.train.y.shape[0], device=self.train.x.device)
            examples = (
                torch.where(chosen[:, None, None], fixed, self.train.x)
                if fixed is not None
                else self.adversarial(self.train.x, self.train.y, chosen, every)
            )
            return self._train(order, lambda x, y, rows: examples[rows])
        # Fresh per batch: each batch's examples are made against the weights of that very step.
        return self._train(order, lambda x, y, rows: self.adversarial(x, y, chosen[rows], rows))

    def _train(self, order: torch.Tensor, source: BatchTransform) -> float:
        """One pass of the model stage's loop on the examples ``source(x, y, rows)`` gives per batch."""
        batch_size, clip = self.model.params.batch_size, self.config.model.grad_clip_norm
        model, optimizer, criterion = self.model, self.optimizer, self.criterion
        if self.config.defend.loss != "trades":
            return train_epoch(
                model, optimizer, criterion, self.train, batch_size, order=order, clip=clip, transform=source
            )
        beta = self.config.defend.beta

        def loss(x: torch.Tensor, y: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
            return trades_loss(model, criterion, x, source(x, y, rows), y, beta)

        return train_epoch(model, optimizer, criterion, self.train, batch_size, order=order, clip=clip, batch_loss=loss)


@attrs.define
class _Monitor:
    """Robust accuracy of the current weights on a seeded validation subset under the defense's attack."""

    attack: ExampleAttack
    x: torch.Tensor
    y: torch.Tensor
    inputs: SampleInputs | None
    decision: DecisionRule
    eval_batch_size: int

    def robust_accuracy(self, model: BiLSTM, rule: DecisionRule) -> float:
        """Share of the subset predicted correctly at ``rule`` (the rule the current weights would be stored with)
        after a fresh attack on ``model``'s weights at that rule."""
        self.attack.decision, self.attack.boundary = rule, rule.boundary
        self.decision = rule
        if isinstance(self.attack, L1Attack):
            part = self.inputs or SampleInputs()
            delta = self.attack.perturb(self.x, self.y, part.allowed, record=part.record)
        else:
            delta = self.attack.perturb(self.x, self.y)
        p = probabilities(predict_logits(model, self.x + delta, self.eval_batch_size))
        return float(np.mean(self.decision.predict_probability(p) == self.y.cpu().numpy()))


def defend_model(
    model: BiLSTM,
    features: FeatureMatrix,
    config: Config,
    *,
    decision: DecisionRule | None = None,
    sparse: SparseTraining | None = None,
    on_epoch: EpochCallback | None = None,
    tensorboard_dir: Path | None = None,
) -> DefenseResult:
    """Fine-tune ``model`` adversarially on the training split (see the module docstring); the input is not changed.

    The examples are made at ``decision`` (the original model's rule; default argmax); the defended
    model gets a rule of the same kind (``model.decision``), made anew on validation. Method ``l1``
    needs ``sparse``. Per-epoch scalars go to TensorBoard in ``tensorboard_dir`` (None: none).
    Shape: features.values (N, 48, 19).
    """
    if config.defend.method == "l1" and sparse is None:
        raise ConfigError("defend.method = l1 needs the sparse attack's settings (a tune-attack run); give --tuned")
    split = SplitIndices.holdout(features)
    check_split(features, split, origin="FeatureMatrix")
    device = resolve_device(config.model.device)
    torch.manual_seed(config.model.seed)
    tensors = [
        SplitTensors.from_arrays(features.values[i], features.labels[i], device)
        for i in (split.train, split.validation, split.evaluation)
    ]
    decision = decision or DecisionRule.argmax()
    copy = _copy_model(model, device)
    trainer = _trainer(copy, tensors[0], _inputs_of(sparse, split.train, device), config, decision, sparse)
    monitor = _monitor(copy, features, split.validation, config, decision, sparse, device)
    writer = summary_writer(tensorboard_dir)
    try:
        started = time.perf_counter()
        fixed = None
        if config.defend.method == "static":  # once, against the given weights, for every attackable row
            every = torch.arange(tensors[0].y.shape[0], device=device)
            fixed = trainer.adversarial(tensors[0].x, tensors[0].y, trainer.eligible, every)
        history, robust = _fine_tune(trainer, fixed, tensors[1], config, monitor, writer, on_epoch)
        seconds = time.perf_counter() - started - sum(r[1] for r in robust)
    finally:
        if writer is not None:
            writer.close()
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
    settings = trainer.attack.settings
    accuracies = tuple(r[0] for r in robust)
    return DefenseResult(trained, config.defend.method, settings, trainer.regenerations, per_epoch, seconds, accuracies)


def _fine_tune(
    trainer: _Trainer,
    fixed: torch.Tensor | None,
    validation: SplitTensors,
    config: Config,
    monitor: _Monitor | None,
    writer: Any,
    on_epoch: EpochCallback | None,
) -> tuple[list[EpochRecord], list[tuple[float, float]]]:
    """The epochs: train, score clean validation, monitor robustness. Returns the records and, per
    monitored epoch, (robust accuracy, seconds it took)."""
    history: list[EpochRecord] = []
    robust: list[tuple[float, float]] = []
    for epoch in range(1, config.defend.epochs + 1):
        started = time.perf_counter()
        train_loss = trainer.epoch(fixed)
        val_loss, val_auroc = validation_scores(trainer.model, validation, config.model.eval_batch_size)
        record = EpochRecord(epoch, train_loss, val_loss, val_auroc, seconds=time.perf_counter() - started)
        history.append(record)
        scalars = epoch_scalars(record)
        if monitor is not None:
            started = time.perf_counter()
            accuracy = monitor.robust_accuracy(trainer.model, _current_rule(trainer.model, validation, config))
            robust.append((accuracy, time.perf_counter() - started))
            scalars["robust_accuracy/validation"] = accuracy
        log.info(
            "defense epoch %d: train loss %.4f, clean validation AUROC %.4f, robust validation accuracy %s",
            epoch,
            train_loss,
            val_auroc,
            f"{robust[-1][0]:.4f}" if monitor is not None else "not monitored",
        )
        if writer is not None:
            for tag, value in scalars.items():
                writer.add_scalar(tag, value, epoch)
        if on_epoch is not None:
            on_epoch(record)
    return history, robust


def _current_rule(model: BiLSTM, validation: SplitTensors, config: Config) -> DecisionRule:
    """The decision rule the current weights would be stored with: made on the clean validation split, as
    ``lstm-adv train`` (and the end of the defense) makes it."""
    p = probabilities(predict_logits(model, validation.x, config.model.eval_batch_size))
    return metrics.decision_rule(config.model.decision, validation.y.cpu().numpy(), p)


def _copy_model(model: BiLSTM, device: torch.device) -> BiLSTM:
    copy = BiLSTM(model.params).to(device)
    copy.load_state_dict(model.state_dict())
    return copy


def _inputs_of(sparse: SparseTraining | None, rows: NDArray[np.int64], device: torch.device) -> SampleInputs | None:
    """The L1 threat's inputs of ``rows`` on ``device`` (None: not method l1)."""
    if sparse is None:
        return None
    arrays = sparse.surface.inputs(rows)
    tensors = {
        k: None if v is None else torch.from_numpy(np.ascontiguousarray(v)).to(device) for k, v in arrays.items()
    }
    return SampleInputs(allowed=tensors["allowed"], record=tensors["record"])


def _example_attack(
    model: BiLSTM, config: Config, decision: DecisionRule, sparse: SparseTraining | None, device: torch.device
) -> ExampleAttack:
    """The attack that makes the training examples: PGD, TRADES' KL PGD, or the sparse L1 attack."""
    if config.defend.method == "l1":
        assert sparse is not None
        return l1_attack(
            model,
            sparse.settings,
            decision=decision,
            surface=sparse.surface,
            config=attrs.evolve(config.attack, include_misclassified=False),
            device=device,
            batch_size=sparse.batch_size,
            max_batch_size=model.params.batch_size,  # it attacks one training batch at a time
        )
    settings = defense_settings(config)
    batch_size, cudnn = config.pgd.batch_size, config.attack.cudnn
    if config.defend.loss == "trades":
        return trades_attack(model, settings, device=device, batch_size=batch_size, cudnn=cudnn)
    return pgd_attack(model, settings, decision=decision, device=device, batch_size=batch_size, cudnn=cudnn)


def _trainer(
    model: BiLSTM,
    train: SplitTensors,
    inputs: SampleInputs | None,
    config: Config,
    decision: DecisionRule,
    sparse: SparseTraining | None,
) -> _Trainer:
    rate = config.defend.learning_rate or model.params.learning_rate
    optimizer = build_optimizer(attrs.evolve(model.params, learning_rate=rate), model)
    attack = _example_attack(model, config, decision, sparse, train.x.device)
    target = attack.settings.target if isinstance(attack, PgdAttack) else None
    eligible = train.y != target if target is not None else torch.ones_like(train.y, dtype=torch.bool)
    generator = torch.Generator().manual_seed(config.model.seed)
    criterion = loss_function(train.y, config.model.imbalance)
    return _Trainer(model, optimizer, criterion, attack, train, inputs, eligible, config, generator)


def _monitor(
    model: BiLSTM,
    features: FeatureMatrix,
    validation: NDArray[np.int64],
    config: Config,
    decision: DecisionRule,
    sparse: SparseTraining | None,
    device: torch.device,
) -> _Monitor | None:
    """The per-epoch robustness monitor on a seeded subset of the validation split (None when switched off).

    It attacks with the defense's threat (PGD at ``defend.eps``, TRADES included; the bounded L1 attack
    for ``l1``), through its own attack object so that monitoring never changes the training examples.
    """
    n = config.defend.monitor_samples
    if n == 0:
        return None
    picked = np.sort(np.random.default_rng(config.model.seed).permutation(validation)[:n])
    if config.defend.method == "l1":
        attack: ExampleAttack = _example_attack(model, config, decision, sparse, device)
    else:
        attack = pgd_attack(
            model,
            defense_settings(config),
            decision=decision,
            device=device,
            batch_size=config.pgd.batch_size,
            cudnn=config.attack.cudnn,
        )
    x = torch.from_numpy(np.ascontiguousarray(features.values[picked])).to(device)
    y = torch.from_numpy(features.labels[picked]).to(device)
    return _Monitor(attack, x, y, _inputs_of(sparse, picked, device), decision, config.model.eval_batch_size)


def sparse_training(
    store: RunStore, model_run: Run, features_run: Run, features: FeatureMatrix, config: Config, tuned: Run | None
) -> tuple[SparseTraining, Run]:
    """Method ``l1``'s attack: the settings of ``tuned`` (default: the newest tune-attack run of ``model_run``)
    with ``defend.l1_iterations`` × ``defend.l1_search_steps``, the ``[attack]`` mask and cells."""
    tuned = tuned or tuned_attack_of(store, model_run)
    if tuned is None:
        raise DataError(
            f"defend --method l1 makes its examples with the tuned sparse attack, but no tune-attack run was tuned "
            f"against model run {model_run.id}; run `lstm-adv tune-attack --model {model_run.id}` first or give "
            "one with --tuned"
        )
    d = config.defend
    settings = attrs.evolve(
        tuned_settings(tuned, config.attack), max_iterations=d.l1_iterations, search_steps=d.l1_search_steps
    )
    surface = attack_surface(config.attack, features, artifacts.feature_definitions(features_run).to_spec())
    return SparseTraining(settings, surface, config.attack.batch_size), tuned


def run_defense(
    store: RunStore,
    model_run: Run,
    config: Config,
    *,
    tuned: Run | None = None,
    on_epoch: EpochCallback | None = None,
) -> Run:
    """Adversarially fine-tune the model of ``model_run`` and write a new model run; bad input writes no run.

    Method ``l1`` uses the settings of ``tuned`` (a tune-attack run; default: the newest one tuned against
    ``model_run``).
    """
    check_model_run(model_run)
    features_run = features_run_of(store, model_run)
    features = artifacts.load_features(features_run)
    check_split(features, SplitIndices.holdout(features), origin=f"features run {features_run.id}")
    model = artifacts.load_trained_model(model_run)
    decision = artifacts.load_decision(model_run)
    config = attrs.evolve(config, model=attrs.evolve(config.model, decision=cast(Decision, decision.rule)))
    sparse, used = None, None
    if config.defend.method == "l1":
        sparse, used = sparse_training(store, model_run, features_run, features, config, tuned)
    oracle = oracle_auroc(store, features_run, features)
    parents = [model_run.id, features_run.id] + ([used.id] if used is not None else [])
    with store.create("model", parents=parents, config=config_as_dict(config)) as writer:
        tensorboard = writer.path / artifacts.TENSORBOARD_DIR
        result = defend_model(
            model, features, config, decision=decision, sparse=sparse, on_epoch=on_epoch, tensorboard_dir=tensorboard
        )
        write_trained(writer, result.trained)
        defense = defense_record(result, model_run, config, used)
        artifacts.write_json(writer.file(artifacts.DEFENSE_FILE), defense)
        summary = holdout_summary(features, result.trained, oracle)
        writer.summary = attrs.evolve(
            summary, defense=defense_summary(result, model_run, config, used), features_run=features_run.id
        )
        _write_hparams(tensorboard, result, defense)
    log.info("defense %s (%s): %d regenerations", result.method, defense["attack"], result.regenerations)
    assert writer.committed is not None
    return writer.committed


def _attack_name(result: DefenseResult, config: Config) -> str:
    return "l1" if result.method == "l1" else config.defend.attack


def _regenerate(result: DefenseResult, config: Config) -> str:
    return "once" if result.method == "static" else config.defend.regenerate


def defense_summary(result: DefenseResult, model_run: Run, config: Config, tuned: Run | None) -> DefenseSummary:
    """The defense part of the defended model run's summary."""
    d = config.defend
    return DefenseSummary(
        method=result.method,
        attack=_attack_name(result, config),
        eps=None if result.method == "l1" else d.eps,
        epochs=d.epochs,
        mix=1.0 if d.loss == "trades" else d.mix,
        regenerate=_regenerate(result, config),
        regenerations=result.regenerations,
        original_model=model_run.id,
        loss=d.loss,
        beta=d.beta if d.loss == "trades" else None,
        tuned=None if tuned is None else tuned.id,
        cells=config.attack.cells if result.method == "l1" else None,
        seconds=result.seconds,
        robust_validation=result.robust_accuracy[-1] if result.robust_accuracy else None,
        batch_size=config.pgd.batch_size,
    )


def defense_record(result: DefenseResult, model_run: Run, config: Config, tuned: Run | None = None) -> dict[str, Any]:
    """What ``defense.json`` holds: method, attack and its settings, loss, epochs, mix, the regeneration count,
    the wall time and the robust validation accuracy per epoch."""
    d = config.defend
    summary = defense_summary(result, model_run, config, tuned)
    settings = result.settings
    attack_settings = (
        attrs.asdict(settings)
        if isinstance(settings, L1Settings)
        else {**attrs.asdict(settings), "alpha": settings.alpha}
    )
    return {
        "method": result.method,
        "attack": summary.attack,
        "eps": summary.eps,
        "epochs": d.epochs,
        "mix": summary.mix,
        "regenerate": summary.regenerate,
        "loss": d.loss,
        "beta": summary.beta,
        "learning_rate": d.learning_rate or result.trained.params.learning_rate,
        "l1" if isinstance(settings, L1Settings) else "pgd": attack_settings,
        "l1_example": d.l1_example if result.method == "l1" else None,
        "tuned": None if tuned is None else str(tuned.id),
        "cells": summary.cells,
        "regenerations": result.regenerations,
        "adversarial_samples_per_epoch": result.examples_per_epoch,
        "seconds": result.seconds,
        "monitor_samples": d.monitor_samples,
        "robust_validation_accuracy": list(result.robust_accuracy),
        "original_model": str(model_run.id),
    }


def _write_hparams(folder: Path, result: DefenseResult, defense: dict[str, Any]) -> None:
    """The defended model's TensorBoard HPARAMS entry: its hyperparameters, rule and defense settings; the test
    metrics, the final clean validation AUROC and robust validation accuracy."""
    trained = result.trained
    keys = ("method", "attack", "eps", "epochs", "mix", "regenerate", "loss", "beta", "learning_rate")
    hparams = {f"defense/{k}": defense[k] for k in keys if defense[k] is not None}
    results = {f"test/{name}": getattr(trained.evaluation, name).value for name in REPORTED}
    results["validation/final_auroc"] = trained.history[-1].val_auroc
    if result.robust_accuracy:
        results["validation/final_robust_accuracy"] = result.robust_accuracy[-1]
    params = trained.params.to_dict() | {"decision": trained.decision.rule, "threshold": trained.threshold}
    write_hparams(folder, params | hparams, results)
