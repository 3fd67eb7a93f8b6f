"""Training stage: fit the BiLSTM on the train split, pick the threshold on validation, score the test split once.

``train_model`` is the service (FeatureMatrix in, :class:`TrainedModel` out); ``run_training``
writes a model run (kind ``model``): ``model.pt`` (state_dict), ``params.json``, ``metrics.json``,
``history.json``, ``tensorboard/``, and the test metrics with bootstrap intervals in its
:class:`~lstm_adv.results.summaries.ModelSummary`.
With ``cv=True`` every fold k of train+validation is scored on its own held-out part: fold k is the
evaluation part, fold (k+1) mod K chooses the early-stopping epoch and the threshold, and the model
trains on the remaining K−2 folds — so no sample that scores a fold ever influenced its model.
"""

from __future__ import annotations

import json
import logging
import tomllib
from collections.abc import Sequence
from pathlib import Path

import attrs
import numpy as np
import pandas as pd
from numpy.typing import NDArray

from lstm_adv import metrics
from lstm_adv.config import Config, ModelConfig
from lstm_adv.domain.decision import DecisionRule
from lstm_adv.domain.errors import ConfigError, DataError, LstmAdvError
from lstm_adv.domain.feature_matrix import SPLITS, FeatureMatrix
from lstm_adv.domain.run_id import RunId
from lstm_adv.models import BiLSTM, Hyperparameters
from lstm_adv.results import artifacts
from lstm_adv.results.artifacts import Predictions
from lstm_adv.results.config_file import config_as_dict
from lstm_adv.results.converter import unstructure
from lstm_adv.results.store import Run, RunStore, RunWriter
from lstm_adv.results.summaries import Estimate, LearningSummary, ModelSummary, Recalibration
from lstm_adv.training_loop import (
    EpochCallback,
    EpochRecord,
    SplitTensors,
    fit_model,
    predict_logits,
    probabilities,
    resolve_device,
    write_hparams,
)

log = logging.getLogger(__name__)

#: The test metrics a model run reports (with bootstrap intervals), in reporting order.
REPORTED = ("auroc", "auprc", "f1", "precision", "recall", "brier")


@attrs.frozen
class SplitIndices:
    """Which FeatureMatrix rows train, validate (early stopping, threshold) and evaluate. Shapes: (n,)."""

    train: NDArray[np.int64] = attrs.field(eq=attrs.cmp_using(eq=np.array_equal))
    validation: NDArray[np.int64] = attrs.field(eq=attrs.cmp_using(eq=np.array_equal))
    evaluation: NDArray[np.int64] = attrs.field(eq=attrs.cmp_using(eq=np.array_equal))
    name: str = "holdout"

    @classmethod
    def holdout(cls, features: FeatureMatrix) -> SplitIndices:
        """The FeatureMatrix's own train / validation / test split."""
        return cls(features.indices("train"), features.indices("validation"), features.indices("test"))

    @classmethod
    def fold(cls, features: FeatureMatrix, k: int) -> SplitIndices:
        """Fold ``k`` evaluates, fold (k+1) mod K validates, the other folds train (test samples unused)."""
        n_folds = features.n_folds
        evaluation = np.flatnonzero(features.fold == k).astype(np.int64)
        validation = np.flatnonzero(features.fold == (k + 1) % n_folds).astype(np.int64)
        used = (features.fold >= 0) & (features.fold != k) & (features.fold != (k + 1) % n_folds)
        return cls(np.flatnonzero(used).astype(np.int64), validation, evaluation, name=f"fold {k}")


@attrs.frozen
class TrainedModel:
    """A trained network (best epoch), its history, the validation-chosen threshold and the one test evaluation."""

    model: BiLSTM = attrs.field(eq=False)
    params: Hyperparameters
    history: tuple[EpochRecord, ...]
    best_epoch: int
    decision: DecisionRule
    validation: metrics.Evaluation
    evaluation: metrics.Evaluation
    split_sizes: dict[str, int]
    device: str
    curves: pd.DataFrame = attrs.field(eq=False)
    predictions: Predictions = attrs.field(eq=False)
    saturated: str | None = None
    learning: metrics.LearningCheck | None = None
    recalibration: tuple[float, float] | None = None

    @property
    def threshold(self) -> float:
        """The decision rule's threshold t on P(death)."""
        return self.decision.threshold


def check_split(features: FeatureMatrix, split: SplitIndices, *, origin: str) -> None:
    """Every part must be non-empty; validation and evaluation parts need both classes (AUROC, threshold)."""
    parts = {"train": split.train, "validation": split.validation, "test": split.evaluation}
    if split.name != "holdout":
        parts = {f"{split.name} {name}": idx for name, idx in parts.items()}
    for (name, idx), needs_both in zip(parts.items(), (False, True, True), strict=True):
        if idx.size == 0:
            raise DataError(f"{origin}: the {name} split is empty; rebuild the features with more admissions")
        counts = np.bincount(features.labels[idx], minlength=2)
        if needs_both and counts.min() == 0:
            only = int(np.argmax(counts))
            raise DataError(
                f"{origin}: the {name} split holds only class {only} ({idx.size} samples); AUROC and the "
                "threshold need both classes; rebuild the features with more admissions or another split seed"
            )


def train_model(
    features: FeatureMatrix,
    params: Hyperparameters,
    config: ModelConfig,
    *,
    split: SplitIndices | None = None,
    on_epoch: EpochCallback | None = None,
    tensorboard_dir: Path | None = None,
) -> TrainedModel:
    """Fit on the training part, choose the threshold (max F1) on validation, evaluate the held-out part once.

    Imbalance handling (``config.imbalance``) touches training batches only; validation and test are
    scored as they are, at their natural prevalence.
    """
    split = split or SplitIndices.holdout(features)
    check_split(features, split, origin="FeatureMatrix")
    device = resolve_device(config.device)
    tensors = [
        SplitTensors.from_arrays(features.values[i], features.labels[i], device)
        for i in (split.train, split.validation, split.evaluation)
    ]
    fit = fit_model(tensors[0], tensors[1], params, config, on_epoch=on_epoch, tensorboard_dir=tensorboard_dir)
    return assess_model(
        fit.model,
        features,
        split,
        tensors,
        history=fit.history,
        best_epoch=fit.best_epoch,
        config=config,
        device=str(device),
    )


def assess_model(
    model: BiLSTM,
    features: FeatureMatrix,
    split: SplitIndices,
    tensors: Sequence[SplitTensors],
    *,
    history: tuple[EpochRecord, ...],
    best_epoch: int,
    config: ModelConfig,
    device: str,
) -> TrainedModel:
    """Make the decision rule (``config.decision``; the threshold on validation) and evaluate the held-out
    part once, at natural prevalence.

    ``tensors`` are the (train, validation, evaluation) tensors of ``split``; the model is in eval mode.
    """
    val_p = probabilities(predict_logits(model, tensors[1].x, config.eval_batch_size))
    decision = metrics.decision_rule(config.decision, features.labels[split.validation], val_p)
    threshold = decision.threshold
    saturated = metrics.saturation(val_p, threshold)
    if saturated is not None:
        log.warning("the model is saturated: %s", saturated)
    eval_p = probabilities(predict_logits(model, tensors[2].x, config.eval_batch_size))
    validation = evaluate_split(features.labels[split.validation], val_p, threshold, config)
    learning = metrics.learning_check(validation, val_p)
    if learning.weak is not None:
        log.warning("the model has not learned: %s", learning.weak)
    return TrainedModel(
        model=model,
        params=model.params,
        history=history,
        best_epoch=best_epoch,
        decision=decision,
        saturated=saturated,
        predictions=Predictions(split.validation, val_p, split.evaluation, eval_p),
        validation=validation,
        learning=learning,
        recalibration=metrics.platt_scaling(features.labels[split.validation], val_p),
        evaluation=evaluate_split(features.labels[split.evaluation], eval_p, threshold, config),
        split_sizes={
            name: int(idx.size)
            for name, idx in zip(SPLITS, (split.train, split.validation, split.evaluation), strict=True)
        },
        device=device,
        curves=pd.concat(
            [
                curve_table("validation", features.labels[split.validation], val_p),
                curve_table("test", features.labels[split.evaluation], eval_p),
            ],
            ignore_index=True,
        ),
    )


def curve_table(split: str, y: NDArray[np.int64], p: NDArray[np.float64]) -> pd.DataFrame:
    """ROC and PR points of one split as a long table (split, curve, x, y, threshold); empty for one class."""
    columns = ["split", "curve", "x", "y", "threshold"]
    if np.unique(y).size < 2:
        return pd.DataFrame({name: [] for name in columns})
    points = metrics.curve_points(y, p)
    parts = [
        pd.DataFrame(
            {
                "curve": curve,
                "x": points[f"{curve}_x"],
                "y": points[f"{curve}_y"],
                "threshold": points[f"{curve}_threshold"],
            }
        )
        for curve in ("roc", "pr")
    ]
    return pd.concat(parts, ignore_index=True).assign(split=split)[columns]


def evaluate_split(
    y: NDArray[np.int64], p: NDArray[np.float64], threshold: float, config: ModelConfig
) -> metrics.Evaluation:
    return metrics.evaluate_predictions(
        y,
        p,
        threshold=threshold,
        bootstrap_samples=config.bootstrap_samples,
        confidence=config.confidence,
        calibration_bins=config.calibration_bins,
        seed=config.seed,
    )


def params_from_config(config: ModelConfig) -> Hyperparameters:
    """The hyperparameters set in the ``[model]`` section."""
    names = [field.name for field in attrs.fields(Hyperparameters)]
    return Hyperparameters.from_mapping({name: getattr(config, name) for name in names}, origin="[model] config")


def load_params_file(path: Path) -> Hyperparameters:
    """Hyperparameters from a JSON or TOML file (e.g. a model run's ``params.json``)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
        data = tomllib.loads(text) if Path(path).suffix == ".toml" else json.loads(text)
    except OSError as exc:
        raise ConfigError(f"params file {path} cannot be read: {exc.strerror}") from None
    except ValueError as exc:
        kind = "TOML" if Path(path).suffix == ".toml" else "JSON"
        raise ConfigError(f"params file {path} is not valid {kind}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"params file {path} must hold a table of hyperparameters")
    return Hyperparameters.from_mapping(data, origin=f"params file {path}")


def run_training(
    store: RunStore,
    features_run: Run,
    params: Hyperparameters,
    config: Config,
    *,
    cv: bool = False,
    extra_parents: Sequence[RunId] = (),
    on_epoch: EpochCallback | None = None,
) -> Run:
    """Train (or cross-validate) on a features run and write a model run; bad input writes no run."""
    features = artifacts.load_features(features_run)
    origin = f"features run {features_run.id}"
    splits = _cv_splits(features, origin) if cv else [SplitIndices.holdout(features)]
    for split in splits:
        check_split(features, split, origin=origin)
    oracle = oracle_auroc(store, features_run, features)
    parents = [features_run.id, *extra_parents]
    with store.create("model", parents=parents, config=config_as_dict(config)) as writer:
        if cv:
            artifacts.write_json(writer.file(artifacts.PARAMS_FILE), params.to_dict())
            _write_cv(writer, features, splits, params, config.model, on_epoch)
        else:
            _write_holdout(writer, features, params, config.model, on_epoch, oracle)
    assert writer.committed is not None
    return writer.committed


def _cv_splits(features: FeatureMatrix, origin: str) -> list[SplitIndices]:
    if features.n_folds < 3:
        raise DataError(
            f"{origin}: cross-validation needs at least 3 folds (evaluate, validate, train); it has "
            f"{features.n_folds}; rebuild the features with preprocess.n_folds >= 3"
        )
    return [SplitIndices.fold(features, k) for k in range(features.n_folds)]


def _write_holdout(
    writer: RunWriter,
    features: FeatureMatrix,
    params: Hyperparameters,
    config: ModelConfig,
    on_epoch: EpochCallback | None,
    oracle: float | None,
) -> None:
    tensorboard = writer.path / artifacts.TENSORBOARD_DIR
    trained = train_model(features, params, config, on_epoch=on_epoch, tensorboard_dir=tensorboard)
    write_trained(writer, trained)
    writer.summary = holdout_summary(features, trained, oracle)
    results = {f"test/{name}": getattr(trained.evaluation, name).value for name in REPORTED}
    results["validation/best_auroc"] = trained.history[trained.best_epoch - 1].val_auroc
    write_hparams(
        tensorboard,
        params.to_dict() | {"decision": trained.decision.rule, "threshold": trained.threshold},
        results,
    )


def write_trained(writer: RunWriter, trained: TrainedModel) -> None:
    """The files of a holdout model run: weights, hyperparameters, history, curves and metrics."""
    artifacts.save_model(writer.path, trained.model)
    artifacts.save_predictions(writer.path, trained.predictions)
    artifacts.write_json(writer.file(artifacts.HISTORY_FILE), [unstructure(r) for r in trained.history])
    artifacts.write_table(writer.file(artifacts.MODEL_CURVES_FILE), trained.curves)
    artifacts.write_json(
        writer.file(artifacts.METRICS_FILE),
        {"validation": unstructure(trained.validation), "test": unstructure(trained.evaluation)},
    )


def holdout_summary(features: FeatureMatrix, trained: TrainedModel, oracle: float | None) -> ModelSummary:
    """The summary of a holdout model run: test metrics with intervals, threshold, sizes, prevalences."""
    test = trained.evaluation
    return ModelSummary(
        cv=False,
        test={name: _estimate(getattr(test, name)) for name in REPORTED},
        confusion_matrix=test.confusion_matrix,
        threshold=trained.threshold,
        decision=trained.decision.rule,
        saturated=trained.saturated,
        learned=_learned(trained.learning),
        recalibration=_recalibration(trained, features),
        best_epoch=trained.best_epoch,
        epochs_run=len(trained.history),
        seconds_per_epoch=float(np.mean([r.seconds for r in trained.history])),
        n=trained.split_sizes,
        prevalence={name: float(features.labels[features.indices(name)].mean()) for name in SPLITS},
        oracle_test_auroc=oracle,
        confidence=test.confidence,
        device=trained.device,
    )


def _learned(check: metrics.LearningCheck | None) -> LearningSummary | None:
    if check is None:
        return None
    return LearningSummary(
        auroc=Estimate(_finite(check.auroc), _finite(check.auroc_low), _finite(check.auroc_high)),
        spread=check.spread,
        brier=check.brier,
        constant_brier=check.constant_brier,
        mean_probability=check.mean_probability,
        prevalence=check.prevalence,
        weak=check.weak,
    )


def _recalibration(trained: TrainedModel, features: FeatureMatrix) -> Recalibration | None:
    """Platt's (a, b) from validation and the test Brier score and mean P(death) before and after it."""
    if trained.recalibration is None:
        return None
    a, b = trained.recalibration
    y = features.labels[trained.predictions.test_index]
    p = trained.predictions.test
    q = metrics.recalibrate(p, a, b)
    return Recalibration(
        a=a,
        b=b,
        test_brier=metrics.brier(y, p),
        test_brier_recalibrated=metrics.brier(y, q),
        test_mean_probability=float(np.mean(p)),
        test_mean_recalibrated=float(np.mean(q)),
    )


def _estimate(interval: metrics.Interval) -> Estimate:
    return Estimate(*(_finite(getattr(interval, part)) for part in ("value", "low", "high")))


def _finite(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def _write_cv(
    writer: RunWriter,
    features: FeatureMatrix,
    splits: list[SplitIndices],
    params: Hyperparameters,
    config: ModelConfig,
    on_epoch: EpochCallback | None,
) -> None:
    folds = []
    for k, split in enumerate(splits):
        trained = train_model(
            features,
            params,
            config,
            split=split,
            on_epoch=on_epoch,
            tensorboard_dir=writer.path / artifacts.TENSORBOARD_DIR / f"fold_{k}",
        )
        artifacts.save_model(writer.path / artifacts.FOLDS_DIR / str(k), trained.model)
        folds.append(
            {
                "fold": k,
                "best_epoch": trained.best_epoch,
                "threshold": trained.threshold,
                "n": trained.split_sizes,
                "evaluation": unstructure(trained.evaluation),
                "history": [unstructure(r) for r in trained.history],
            }
        )
    artifacts.write_json(writer.file(artifacts.METRICS_FILE), {"folds": folds})
    values = {name: np.array([f["evaluation"][name]["value"] for f in folds], dtype=np.float64) for name in REPORTED}
    writer.summary = ModelSummary(
        cv=True,
        n_folds=len(folds),
        folds={name: tuple(_finite(x) for x in v) for name, v in values.items()},
        mean={name: _finite(float(v.mean())) for name, v in values.items()},
        sd={name: _finite(float(v.std(ddof=1))) for name, v in values.items()},
    )


def oracle_auroc(store: RunStore, features_run: Run, features: FeatureMatrix) -> float | None:
    """On synthetic data, the generator's AUROC (true death probabilities) on the same test split, else ``None``."""
    queries = [run for run in store.lineage(features_run) if run.kind == "query"]
    synth_run = artifacts.find_synth_run(store, queries[0]) if queries else None
    if synth_run is None:
        return None
    test = features.indices("test")
    try:
        truth = artifacts.load_truth(synth_run)
        return metrics.oracle_auroc(truth, features.hadm_ids[test], features.labels[test])
    except LstmAdvError as exc:  # a mismatched synth run must not cost the trained model
        log.warning("no oracle AUROC from synth run %s: %s", synth_run.id, exc)
        return None
