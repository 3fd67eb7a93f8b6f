"""What an attack is aimed at: the model (a model run, or a trial of a tune-model run), the features
run it was trained on, what it may change, and the one place attacks are built.

:func:`attack_surface` turns ``[attack]`` settings and a features run into an :class:`AttackSurface`
(the threat — ``cells = record | observed | all`` with the features/hours mask and the bounds — and
each row's record or measured cells), with every check that must pass before a run is written.
:func:`l1_attack`, :func:`pgd_attack` and :func:`trades_attack` build every attack a stage or the
Python API uses; nothing else constructs one. Shared by the stages that attack a model (tune-attack,
attack, robustness, defend), so none of them imports another.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Literal

import attrs
import numpy as np

from lstm_adv import metrics
from lstm_adv.config import AttackConfig
from lstm_adv.domain.decision import DecisionRule
from lstm_adv.domain.errors import ConfigError, DataError, RunKindError
from lstm_adv.domain.feature_matrix import FeatureMatrix
from lstm_adv.domain.features import FeatureSpec
from lstm_adv.domain.run_id import RunId, a_kind
from lstm_adv.results import artifacts
from lstm_adv.results.store import Run, RunStore
from lstm_adv.results.summaries import TuneAttackSummary, TuneModelSummary

if TYPE_CHECKING:
    import torch
    from torch import nn

    from lstm_adv.attacks import L1Attack, L1Settings, PgdAttack, PgdSettings, Threat
    from lstm_adv.attacks.trades import TradesAttack
    from lstm_adv.domain.perturbation import AttackBatchResult

# Stored and recomputed probabilities agree to float32 rounding on one machine; other CPUs and GPUs differ
# by ~1e-6. A larger gap means other weights or other features.
_REPRODUCE_TOLERANCE = 1e-4


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

    def load(self, features: FeatureMatrix, device: torch.device) -> tuple[nn.Module, DecisionRule]:
        """The model and its decision rule: the model run's own (checked against its stored validation
        probabilities), or for a tuning trial the threshold rule made on the validation split."""
        model = self.load_model(device)
        if self.trial is not None:
            rows = features.indices("validation")
            p = _p_death(model, features.values[rows], device)
            decision = metrics.decision_rule("threshold", features.labels[rows], p)
            _refuse_saturated(p, decision, f"trial {self.trial} of tuning run {self.model_run.id}")
            return model, decision
        decision = artifacts.load_decision(self.model_run)
        stored = artifacts.load_predictions(self.model_run)
        if stored.validation_index.size and int(stored.validation_index.max()) >= features.n_samples:
            raise DataError(f"model run {self.model_run.id} was not trained on features run {self.features_run.id}")
        p = _p_death(model, features.values[stored.validation_index], device)
        gap = float(np.abs(p - stored.validation).max(initial=0.0))
        if gap > _REPRODUCE_TOLERANCE:
            raise DataError(
                f"model run {self.model_run.id}: its weights do not reproduce its stored validation probabilities "
                f"(largest difference {gap:.2g}); the run is damaged or belongs to other features; re-run the training"
            )
        _refuse_saturated(stored.validation, decision, f"model run {self.model_run.id}")
        return model, decision


def _refuse_saturated(p_validation: np.ndarray, decision: DecisionRule, what: str) -> None:
    """A saturated model leaves an attack nothing to flip: stop before any run is written."""
    reason = metrics.saturation(p_validation, decision.threshold)
    if reason is not None:
        raise DataError(
            f"{what} is saturated ({reason}), so an attack cannot flip it; train a model with a bounded "
            "activation (tanh) or a lower learning rate"
        )


def _p_death(model: nn.Module, x: np.ndarray, device: torch.device) -> np.ndarray:
    import torch

    from lstm_adv.training_loop import predict_logits, probabilities

    return probabilities(predict_logits(model, torch.from_numpy(np.ascontiguousarray(x)).to(device), 2048))


def resolve_target(store: RunStore, run: Run, trial: int | None = None) -> AttackTarget:
    """A model run (``trial`` must be ``None``) or a tune-model run's trial (default: its best) as a target."""
    if run.kind == "model":
        if trial is not None:
            raise ConfigError(f"--trial selects a trial of a tune-model run; run {run.id} is a model run")
        if artifacts.is_cv_run(run):
            raise DataError(f"model run {run.id} is a cross-validation run; train without --cv to get one model")
        return AttackTarget(run, None, features_run_of(store, run))  # a defended model: through its original
    if run.kind == "tune-model":
        number, _params = artifacts.trial_params(run, trial)
        features_run = store.get(str(run.summary_as(TuneModelSummary).features_run), kind="features")
        return AttackTarget(run, number, features_run)
    raise RunKindError(
        f"run {run.id} is {a_kind(run.kind)} run; --model needs a model run (or a tune-model run with --trial)"
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


def tuned_attack_of(store: RunStore, model_run: Run) -> Run | None:
    """The newest complete tune-attack run tuned against ``model_run`` (None when there is none)."""
    tuned = [
        run
        for run in store.list("tune-attack")
        if run.manifest.status == "complete"
        and isinstance(run.manifest.summary, TuneAttackSummary)
        and run.manifest.summary.model_run == model_run.id
        and run.manifest.summary.best is not None
    ]
    return tuned[-1] if tuned else None


def check_model_run(run: Run) -> None:
    """A single (non cross-validation) model run, else a clear error."""
    if run.kind != "model":
        raise RunKindError(f"run {run.id} is {a_kind(run.kind)} run; give a model run (lstm-adv train)")
    if artifacts.is_cv_run(run):
        raise DataError(f"model run {run.id} is a cross-validation run; train without --cv to get one model")


@attrs.frozen(eq=False)
class AttackSurface:
    """What attacks on a features run may change: the threat (shared by every row) and each row's inputs —
    its record (``cells = record``), its measured cells (``observed``) or nothing (``all``)."""

    threat: Threat
    features: FeatureMatrix

    @property
    def cells(self) -> str:
        """The threat's name: ``record``, ``observed`` or ``all``."""
        return self.threat.name

    def inputs(self, rows: np.ndarray) -> dict[str, np.ndarray | None]:
        """The per-row inputs of the threat for ``rows``, as :meth:`Attack.run` takes them."""
        if self.cells == "record":
            return {"allowed": None, "record": self.features.record_values()[rows]}
        if self.cells == "observed":
            return {"allowed": self.features.observation_mask()[rows], "record": None}
        return {"allowed": None, "record": None}

    def editable(self, rows: np.ndarray) -> np.ndarray | None:
        """Per row, what the threat may change (None: every cell of every row). Shape: (len(rows), 48 or 49, 19)."""
        inputs = self.inputs(rows)
        editable = self.threat.editable(self.threat.inputs(rows.size, **inputs))
        return None if editable is None else editable.cpu().numpy()

    def attack(
        self, attack: L1Attack, rows: np.ndarray, *, progress: Callable[[int], None] | None = None
    ) -> AttackBatchResult:
        """``attack`` on the features run's ``rows`` (values, labels and the threat's inputs)."""
        return attack.run(
            self.features.values[rows],
            self.features.labels[rows],
            sample_index=rows,
            progress=progress,
            **self.inputs(rows),
        )


def attack_surface(config: AttackConfig, features: FeatureMatrix, spec: FeatureSpec) -> AttackSurface:
    """The threat of ``[attack]`` on ``features``: every check before a run is written, one line each.

    A bad features/hours mask, an unknown feature in ``max_change``, a features run without the record
    (``record``) or observation mask (``observed``) are :class:`ConfigError` / :class:`DataError` lines.
    """
    from lstm_adv.attacks import CellThreat, RecordThreat

    mask = attack_mask(config, spec)
    if config.max_change and config.cells != "record":
        raise ConfigError(
            f"attack.max_change bounds altered measurements, which only --cells record makes; got --cells "
            f"{config.cells}"
        )
    if config.cells == "all":
        return AttackSurface(CellThreat("all", mask=mask), features)
    if config.cells == "observed":
        if features.observed is None:
            raise DataError(
                "--cells observed needs the features run's observation mask, which this features run does not "
                "have (it was built before the toolkit recorded one); re-run `lstm-adv preprocess`, or use "
                "--cells all"
            )
        return AttackSurface(CellThreat("observed", mask=mask), features)
    if features.record is None:
        raise DataError(
            "--cells record needs the features run's record (the hourly measurements its values were filled "
            "from), which this features run does not have (it was built before the toolkit kept one); re-run "
            "`lstm-adv preprocess`, or use --cells observed or all"
        )
    bounds = _max_change(config.max_change, features, spec)
    threat = RecordThreat(
        features.scaling.scaled_median, mask=mask, max_change=bounds, prewindow=config.record_prewindow
    )
    return AttackSurface(threat, features)


def _max_change(clinical: dict[str, float], features: FeatureMatrix, spec: FeatureSpec) -> np.ndarray | None:
    """``attack.max_change`` in scaled units per feature (inf: unbounded). A feature whose p5 equals its p95
    has no room to change (its box is one value): bound 0. Shape: (19,) or None."""
    unknown = sorted(set(clinical) - set(spec.names))
    if unknown:
        raise ConfigError(
            f"attack.max_change: unknown feature {unknown[0]!r}; use names from the feature definitions "
            f"({', '.join(spec.names)})"
        )
    span = features.scaling.span
    if not clinical and (span > 0).all():
        return None
    given = np.array([clinical.get(name, np.inf) for name in spec.names], dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        scaled = np.where(span > 0, given / np.where(span > 0, span, 1.0), 0.0)
    return scaled


def l1_attack(
    model: nn.Module,
    settings: L1Settings,
    *,
    decision: DecisionRule,
    surface: AttackSurface,
    config: AttackConfig,
    device: torch.device,
    max_batch_size: int,
    batch_size: int | Literal["auto"] | None = None,
) -> L1Attack:
    """The sparse L1 attack on ``surface``'s threat, with ``[attack]``'s batch size (or ``batch_size``),
    misclassified-sample rule and cuDNN setting. ``max_batch_size``: the most samples one call attacks."""
    from lstm_adv.attacks import L1Attack

    return L1Attack(
        model,
        settings,
        decision=decision,
        device=device,
        threat=surface.threat,
        batch_size=config.batch_size if batch_size is None else batch_size,
        max_batch_size=max_batch_size,
        include_misclassified=config.include_misclassified,
        cudnn=config.cudnn,
    )


def pgd_attack(
    model: nn.Module,
    settings: PgdSettings,
    *,
    decision: DecisionRule,
    device: torch.device,
    batch_size: int,
    cudnn: bool = True,
) -> PgdAttack:
    """PGD on every model-input cell at the model's decision rule."""
    from lstm_adv.attacks import PgdAttack

    return PgdAttack(model, settings, decision=decision, device=device, batch_size=batch_size, cudnn=cudnn)


def trades_attack(
    model: nn.Module, settings: PgdSettings, *, device: torch.device, batch_size: int, cudnn: bool = True
) -> TradesAttack:
    """TRADES' inner attack (untargeted KL PGD) on every model-input cell."""
    from lstm_adv.attacks.trades import TradesAttack

    return TradesAttack(model, attrs.evolve(settings, target=None), device=device, batch_size=batch_size, cudnn=cudnn)


def tuned_settings(tuned: Run, config: AttackConfig) -> L1Settings:
    """The chosen κ, λ, step size and method of a tune-attack run, with the attack's iteration budget."""
    from lstm_adv.attacks import L1Settings

    if tuned.kind != "tune-attack":
        raise RunKindError(f"run {tuned.id} is {a_kind(tuned.kind)} run; --tuned needs a tune-attack run")
    best = artifacts.load_tuned_settings(tuned)
    if best is None:
        raise ConfigError(
            f"tune-attack run {tuned.id} has no completed trial; continue it with "
            f"`lstm-adv tune-attack --resume {tuned.id}`"
        )
    return L1Settings(
        kappa=best.kappa,
        lam=best.lam,
        step_size=best.step_size,
        method=best.method,
        max_iterations=config.max_iterations,
        search_steps=config.search_steps,
        candidates=config.candidates,
        swap_rounds=config.swap_rounds,
        refine_rounds=config.refine_rounds,
    )
