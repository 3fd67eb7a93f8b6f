"""What each run kind records about itself: one frozen summary class per kind, stored in the manifest.

A stage builds its summary as a value and hands it to the run writer; readers (reports, the
pipeline, the CLI) get it back typed, through :meth:`lstm_adv.results.store.Run.summary_as`.
Lineage fields are :class:`RunId` values. The manifest stores the unstructured form; reading a
manifest written by an older version whose summary does not fit these classes fails with one
line that names the run and says to re-run its stage.
"""

from __future__ import annotations

from typing import Any

import attrs

from lstm_adv.domain.features import FeatureDefinitions
from lstm_adv.domain.run_id import RunId
from lstm_adv.models.hyperparameters import Hyperparameters

# --- shared pieces ------------------------------------------------------------------------------------


@attrs.frozen
class Step:
    """A named count: a cohort filter step and what is left after it, or rows of one kind."""

    step: str
    count: int


@attrs.frozen
class Estimate:
    """A metric with its bootstrap interval (``None`` where undefined)."""

    value: float | None
    low: float | None = None
    high: float | None = None

    def text(self, fmt: str = ".3f") -> str:
        """``value [low, high]``, ``value`` without an interval, or ``—`` without a value."""
        if self.value is None:
            return "—"
        if self.low is None or self.high is None:
            return format(self.value, fmt)
        return f"{self.value:{fmt}} [{self.low:{fmt}}, {self.high:{fmt}}]"


# --- data -----------------------------------------------------------------------------------------------


@attrs.frozen
class QuerySummary:
    """A query run: the source, the cohort flow (stays left after each rule) and rows per stored table.

    ``window_start`` says in words where each admission's window starts (``cohort.window_start``);
    ``features`` holds the feature definitions the SQL read (name, SHA-256 and text). Both are
    ``None`` in runs made before they were recorded (those used the shipped features.toml and
    started the window at the earliest intime of the admission's included stays).
    """

    flow: tuple[Step, ...]
    tables: dict[str, int]
    schema: str
    source: str
    window_start: str | None = None
    features: FeatureDefinitions | None = None


@attrs.frozen
class SynthSeconds:
    """Wall time of generating and loading a synthetic cohort."""

    generate: float
    load: float
    total: float


@attrs.frozen
class SynthSummary:
    """A synth run: size, seed, where it was loaded, outcome prevalence and the oracle AUROC."""

    admissions: int
    seed: int
    schema: str
    source: str
    tables: dict[str, int]
    deaths: int
    prevalence: float
    mean_death_probability: float
    oracle_auroc_all: float | None
    seconds: SynthSeconds


@attrs.frozen
class SplitCounts:
    """Samples, deaths and patients of one split."""

    samples: int
    positives: int
    subjects: int


@attrs.frozen
class FeatureScaling:
    """Training-split statistics of one feature in its clinical unit."""

    p5: float
    median: float
    p95: float


@attrs.frozen
class FeatureCoverage:
    """How much of one feature was measured rather than filled, over all samples of a features run.

    ``measured_fraction``: share of the (sample, hour) cells of the window whose hour held a
    measurement. ``unmeasured_samples``: samples with no measurement of the feature in the window or
    its look-back, whose whole series is the training split's median.
    """

    measured_fraction: float
    unmeasured_samples: int


@attrs.frozen
class FeaturesSummary:
    """A features run: the preprocessing flow, counts, window rule, shape, splits, missingness, scaling.

    ``coverage`` (per feature) and ``samples_without_vitals`` (samples whose six vital signs were
    never measured, in the window or its look-back) say how much of the matrix is imputed;
    ``features`` are the definitions the data were made with. All three are ``None`` in runs made
    before they were recorded.
    """

    flow: tuple[Step, ...]
    measurements: tuple[Step, ...]
    window_rule: str
    shape: tuple[int, int, int]
    n_folds: int
    splits: dict[str, SplitCounts]
    missingness: dict[str, float]
    scaling: dict[str, FeatureScaling]
    coverage: dict[str, FeatureCoverage] | None = None
    samples_without_vitals: int | None = None
    features: FeatureDefinitions | None = None


# --- model ------------------------------------------------------------------------------------------------


@attrs.frozen
class ModelTrial:
    """One trial of a model study."""

    number: int
    state: str
    value: float | None
    params: Hyperparameters | None
    best_epoch: int | None
    last_epoch: int | None
    worker: str | None


@attrs.frozen
class TuneModelSummary:
    """A tune-model run: the study, its trials and the best one."""

    study_name: str
    storage: str
    features_run: RunId
    objective: str
    n_trials: int
    states: dict[str, int]
    best: ModelTrial | None
    trials: tuple[ModelTrial, ...]
    #: Trials the study aims for in all (finished ones counted, interrupted ones not): what a resume completes.
    budget: int | None = None


@attrs.frozen
class DefenseSummary:
    """How a defended model was made (``lstm-adv defend``).

    ``attack`` is the attack that made the training examples (``pgd-linf``, ``pgd-l2`` or ``l1``);
    ``loss`` ``ce`` or ``trades`` (with ``beta``); ``tuned`` the tune-attack run whose settings made
    the sparse examples of method ``l1`` (on ``cells``); ``seconds`` the wall time of the whole
    fine-tuning (example generation included); ``robust_validation`` the robust accuracy of the
    final weights on the monitored validation samples under that attack, at the original model's
    rule (``None`` where not monitored). Fields after ``original_model`` are ``None`` (or ``ce``) in
    runs made before they were recorded.
    """

    method: str
    attack: str
    eps: float | None
    epochs: int
    mix: float
    regenerate: str
    regenerations: int
    original_model: RunId
    batch_size: int | None = None  # PGD samples attacked at once (None in runs made before it was recorded)
    loss: str = "ce"
    beta: float | None = None
    tuned: RunId | None = None
    cells: str | None = None
    seconds: float | None = None
    robust_validation: float | None = None


@attrs.frozen
class LearningSummary:
    """Whether a model has learned, judged on validation at train time (see :func:`lstm_adv.metrics.learning_check`):
    ``weak`` says why it has not (None: it has)."""

    auroc: Estimate
    spread: float
    brier: float
    constant_brier: float
    mean_probability: float
    prevalence: float
    weak: str | None = None


@attrs.frozen
class Recalibration:
    """Platt's recalibration fitted on validation, P' = σ(a · logit(P) + b), and the test Brier score before and
    after it (weighted sampling trains the model towards a balanced prior, so raw P(death) overstates risk)."""

    a: float
    b: float
    test_brier: float
    test_brier_recalibrated: float
    test_mean_probability: float
    test_mean_recalibrated: float


@attrs.frozen
class ModelSummary:
    """A model run: a holdout evaluation (``cv`` false) or cross-validation over folds (``cv`` true).

    Holdout fields are ``None`` for a cross-validation run and the reverse; ``defense`` is set for a
    model made by ``lstm-adv defend``.
    """

    cv: bool
    test: dict[str, Estimate] | None = None
    confusion_matrix: tuple[tuple[int, int], tuple[int, int]] | None = None
    threshold: float | None = None
    best_epoch: int | None = None
    epochs_run: int | None = None
    seconds_per_epoch: float | None = None
    n: dict[str, int] | None = None
    prevalence: dict[str, float] | None = None
    oracle_test_auroc: float | None = None
    confidence: float | None = None
    device: str | None = None
    n_folds: int | None = None
    folds: dict[str, tuple[float | None, ...]] | None = None
    mean: dict[str, float | None] | None = None
    sd: dict[str, float | None] | None = None
    defense: DefenseSummary | None = None
    features_run: RunId | None = None
    decision: str | None = None
    saturated: str | None = None
    learned: LearningSummary | None = None
    recalibration: Recalibration | None = None

    @property
    def weak(self) -> str | None:
        """Why the model has not learned (None: it has, or a run made before the check existed)."""
        return None if self.learned is None else self.learned.weak


# --- attack -----------------------------------------------------------------------------------------------


@attrs.frozen
class TunedAttackSettings:
    """The attack settings one tuning trial tried (``best_params.json`` holds the chosen trial's).

    λ and the step size are scale-free (relative to each sample's gradient scale).
    """

    kappa: float
    lam: float
    step_size: float
    method: str


@attrs.frozen
class AttackTrial:
    """One trial of an attack study: its objective value(s), settings and what it found on the subset."""

    number: int
    state: str
    values: tuple[float, ...] | None
    settings: TunedAttackSettings | None
    successes: int | None
    last_step: int | None
    success_rate: float | None = None
    median_l0: float | None = None
    batch_size: int | None = None  # samples attacked at once (None in runs made before it was recorded)
    #: Model passes per attacked sample (None in runs made before they were recorded).
    forward_passes: float | None = None
    backward_passes: float | None = None

    @property
    def value(self) -> float | None:
        """The single objective's value (the first of several for a multi-objective study)."""
        return self.values[0] if self.values else None


@attrs.frozen
class TuneAttackSummary:
    """A tune-attack run: the study, what it optimized on which subset, and every trial."""

    study_name: str
    storage: str
    model_run: RunId
    model_trial: int | None
    features_run: RunId
    objective: str
    max_nonzero: int
    subset_size: int
    subset_seed: int
    chunks: int
    max_iterations: int
    n_trials: int
    states: dict[str, int]
    n_pruned: int
    best: AttackTrial | None
    trials: tuple[AttackTrial, ...]
    decision: str
    threshold: float
    cells: str
    min_success: float
    pareto: tuple[int, ...] = ()
    #: Trials the study aims for in all (finished ones counted, interrupted ones not): what a resume completes.
    budget: int | None = None


@attrs.frozen
class NormMeans:
    """Mean L0 and L1 (and median L0) of a group of successful examples (``None`` without examples)."""

    mean_l0: float | None
    mean_l1: float | None
    median_l0: float | None = None


@attrs.frozen
class DirectionStats:
    """Attacked and successful samples of one direction, with the sizes of their first and best examples."""

    attacked: int
    successful: int
    success_rate: float
    first: NormMeans
    best: NormMeans
    sparse: NormMeans


@attrs.frozen
class Batches:
    """Finished and all samples of an attack (it progresses in blocks of samples)."""

    done: int
    total: int


@attrs.frozen
class AttackSummary:
    """An attack run: what was attacked with which tuned settings, and how often it succeeded."""

    tune_attack_run: RunId
    model_run: RunId
    model_trial: int | None
    features_run: RunId
    split: str
    shard: str | None
    batch_size: int
    batches: Batches
    device: str
    n_samples: int
    n_attacked: int
    n_successful: int
    success_rate: float
    iterations: int
    directions: dict[str, DirectionStats]
    decision: str
    threshold: float
    cells: str
    n_no_cell: int
    median_l0_sparse: float | None
    merged_shards: tuple[RunId, ...] = ()
    #: What L0 counts: ``measurement`` (altered measurements, the record threat) or ``cell``.
    unit: str = "cell"
    #: Median model-input cells the sparse examples moved (differs from L0 for the record threat).
    median_input_l0_sparse: float | None = None
    #: Success rate and median L0 of the sparse examples with bootstrap intervals.
    success: Estimate | None = None
    median_l0_interval: Estimate | None = None


@attrs.frozen
class DirectionCounts:
    """Attacked and successful samples of one direction."""

    attacked: int
    successful: int
    success_rate: float


@attrs.frozen
class AnalysisSummary:
    """An analysis run: the rule, counts per direction, norms, the share of changed cells that were measured,
    and the top features and hours, by example kind (first, best, sparse) and direction (0to1, 1to0, all)."""

    attack_run: RunId
    features_run: RunId
    decision: str
    threshold: float
    cells: str
    measured_fraction: dict[str, dict[str, float | None]]
    median_l0: dict[str, dict[str, float | None]]
    n_samples: int
    n_attacked: int
    n_successful: int
    success_rate: float
    directions: dict[str, DirectionCounts]
    mean_l0: dict[str, dict[str, float | None]]
    mean_l1: dict[str, dict[str, float | None]]
    top_features: dict[str, dict[str, tuple[str, ...]]]
    top_hours: dict[str, dict[str, tuple[int, ...]]]
    figures: tuple[str, ...]
    #: What L0 counts: ``measurement`` (altered measurements, the record threat) or ``cell``.
    unit: str = "cell"
    #: Success rate and median L0 of the sparse examples (all directions) with bootstrap intervals.
    success: Estimate | None = None
    median_l0_sparse: Estimate | None = None
    #: Record threat: median model-input cells moved per altered measurement (sparse examples).
    leverage: float | None = None
    #: Record threat: the features with the highest per-opportunity rate (sparse examples), by direction.
    top_per_opportunity: dict[str, tuple[str, ...]] = attrs.Factory(dict)


# --- defenses ---------------------------------------------------------------------------------------------


@attrs.frozen
class EvaluatedModel:
    """A model of a robustness run and the defense that made it (``baseline`` for a trained model)."""

    model: RunId
    defense: str


@attrs.frozen
class PgdRecord:
    """The PGD settings of a robustness sweep (ε varies along the sweep)."""

    step_size: float | None
    iterations: int
    norm: str
    target: int | None
    random_start: bool
    loss: str
    seed: int
    batch_size: int | None = None  # samples attacked at once (None in runs made before it was recorded)


@attrs.frozen
class RobustnessRow:
    """The metrics of one model at one ε."""

    model: RunId
    eps: float
    clean_accuracy: float | None = None
    robust_accuracy: float | None = None
    clean_recall: float | None = None
    robust_recall: float | None = None
    robust_specificity: float | None = None
    robust_auroc: float | None = None
    robust_auprc: float | None = None
    success_rate: float | None = None
    mean_linf: float | None = None
    mean_l2: float | None = None
    #: 95 % intervals (low, high) of robust accuracy, robust recall, success rate, robust AUROC and AUPRC.
    intervals: dict[str, tuple[float, float]] = attrs.Factory(dict)

    def text(self, metric: str, fmt: str = ".3f") -> str:
        """``value [low, high]`` of one metric (the value alone without a stored interval; — without a value)."""
        value = getattr(self, metric)
        if value is None:
            return "—"
        if metric not in self.intervals:
            return format(value, fmt)
        low, high = self.intervals[metric]
        return f"{value:{fmt}} [{low:{fmt}}, {high:{fmt}}]"


@attrs.frozen
class L1Record:
    """The tuned sparse L1 attack run against every model: its settings, tune-attack run and statistics."""

    settings: dict[str, Any]
    by_model: dict[str, dict[str, float | None]]
    tuned: RunId | None = None
    batch_size: dict[str, int] = attrs.Factory(dict)  # per model: samples attacked at once


@attrs.frozen
class FeatureScale:
    """One feature's scale: its clinical unit and the training split's p5 and p95 (one normalized unit is
    p95 − p5 of that unit), as the features run stored them."""

    feature: str
    unit: str
    p5: float
    p95: float

    @property
    def span(self) -> float:
        """p95 − p5: what a normalized change of 1 means in the feature's unit."""
        return self.p95 - self.p5


@attrs.frozen
class ObfuscationCheck:
    """The gradient-obfuscation check of one model: the sweep's PGD with an unbounded budget (``eps`` covers
    the whole box) for ``iterations`` steps. ``robust_accuracy`` over the split must be at most
    ``tolerance``; else ``reliable`` is false: gradients may be masked and a small robust-accuracy drop
    under the bounded attacks proves little for that model."""

    eps: float
    iterations: int
    robust_accuracy: float
    success_rate: float
    tolerance: float
    reliable: bool


@attrs.frozen
class RobustnessSummary:
    """A robustness run: the models, the split, the PGD sweep and its table, and the L1 attack.

    ``scales`` give each feature's unit and scale (ε in clinical units is ε · (p95 − p5));
    ``obfuscation`` the gradient-obfuscation check per model (empty when skipped). Both are empty in
    runs made before they were recorded.
    """

    models: tuple[EvaluatedModel, ...]
    features_run: RunId
    split: str
    n: int
    attack: str
    eps: tuple[float, ...]
    pgd: PgdRecord
    table: tuple[RobustnessRow, ...]
    l1: L1Record
    decisions: dict[str, str]
    cells: str
    pool: dict[str, int]
    scales: tuple[FeatureScale, ...] = ()
    obfuscation: dict[str, ObfuscationCheck] = attrs.Factory(dict)

    def unreliable(self) -> tuple[str, ...]:
        """The models whose obfuscation check failed (their evaluation may be unreliable)."""
        return tuple(model for model, check in self.obfuscation.items() if not check.reliable)


# --- reports ----------------------------------------------------------------------------------------------


@attrs.frozen
class ReportSummary:
    """A report run: which document rendered which run, with which engine, into which files."""

    document: str
    reported: RunId
    kind: str
    engine: str
    files: tuple[str, ...]


RunSummary = (
    QuerySummary
    | SynthSummary
    | FeaturesSummary
    | TuneModelSummary
    | ModelSummary
    | TuneAttackSummary
    | AttackSummary
    | AnalysisSummary
    | RobustnessSummary
    | ReportSummary
)

#: Run kind → its summary class.
SUMMARY_TYPES: dict[str, type[Any]] = {
    "query": QuerySummary,
    "synth": SynthSummary,
    "features": FeaturesSummary,
    "tune-model": TuneModelSummary,
    "model": ModelSummary,
    "tune-attack": TuneAttackSummary,
    "attack": AttackSummary,
    "analysis": AnalysisSummary,
    "robustness": RobustnessSummary,
    "report": ReportSummary,
}
