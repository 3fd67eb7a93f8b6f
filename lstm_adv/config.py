"""Typed configuration, validated when it is loaded. Defaults live in ``resources/defaults.toml``.

Every section is a frozen attrs class; choices are ``Literal`` types and every number has a
validator, so a configuration that loads is one every stage can use: no stage checks its
section again. Messages name the dotted key (``model.imbalance must be one of …``).
See :func:`lstm_adv.results.config_file.load_config` for how files and options are merged.
"""

from __future__ import annotations

import math
from typing import Any, Literal, get_args

import attrs

from lstm_adv.domain import validators as v
from lstm_adv.domain.errors import ConfigError
from lstm_adv.domain.shapes import N_HOURS as WINDOW_HOURS
from lstm_adv.domain.shapes import SPLIT_ALIASES

Device = Literal["auto", "cpu", "cuda"]
Activation = Literal["relu", "tanh"]
Optimizer = Literal["adam", "rmsprop", "sgd"]
Imbalance = Literal["weighted_sampling", "class_weighted_loss", "none"]
Monitor = Literal["auroc", "loss"]
L1Method = Literal["ista", "fista", "adam", "greedy"]
AttackObjective = Literal["pareto", "sparsity", "sparse_small", "sparse_small_max", "max_num_nonzero_perts"]
Decision = Literal["threshold", "argmax"]
Cells = Literal["record", "observed", "all"]
PgdAttackName = Literal["pgd-linf", "pgd-l2"]
PgdLoss = Literal["ce", "margin"]
DefenseMethod = Literal["static", "adaptive", "l1"]
DefenseLoss = Literal["ce", "trades"]
SparseExample = Literal["sparse", "best", "first"]
Regenerate = Literal["epoch", "batch"]
SplitName = Literal["train", "validation", "test"]
AttackSplit = Literal["test", "validation", "val", "train", "all"]
WindowStart = Literal["all", "included"]

CELLS: tuple[str, ...] = get_args(Cells)
#: What each threat (``attack.cells``) means, in the words of the CLI, summaries and reports.
THREATS = {
    "record": "altered measurements of the record, pushed through the fill (a data-entry error)",
    "observed": "measured model-input cells, each changed alone (not producible from a record)",
    "all": "every model-input cell, measured or imputed (Sun et al.)",
}
DEVICES: tuple[str, ...] = get_args(Device)
ACTIVATIONS: tuple[str, ...] = get_args(Activation)
OPTIMIZERS: tuple[str, ...] = get_args(Optimizer)
L1_METHODS: tuple[str, ...] = get_args(L1Method)
OBJECTIVES: tuple[str, ...] = get_args(AttackObjective)
DEFENSE_METHODS: tuple[str, ...] = get_args(DefenseMethod)


#: Bounds on sizes that would otherwise reach the allocator (a network of 10¹⁵ units) or the clock.
MAX_WIDTH = 16384
MAX_LAYERS = 64
MAX_WAIT_S = 24 * 3600


def _choice(owner: str, kind: Any, default: str) -> Any:
    """A field whose value is one of the ``Literal`` type ``kind``."""
    return attrs.field(default=default, validator=v.one_of(get_args(kind), owner=owner))


def _canonical_split(name: Any) -> Any:
    """``val`` → ``validation`` (one vocabulary everywhere; the short name is accepted)."""
    return SPLIT_ALIASES.get(name, name) if isinstance(name, str) else name


def _tuple(value: Any) -> tuple[Any, ...]:
    return tuple(value)


@attrs.frozen
class DatabaseConfig:
    """Where the MIMIC-III tables are and how long to wait for a connection."""

    schema: str = "mimiciii"
    connect_timeout_s: int = attrs.field(default=5, validator=v.at_least(1, high=MAX_WAIT_S, owner="database"))


def _loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@attrs.frozen
class EmbeddedConfig:
    """The toolkit's own PostgreSQL server."""

    port: int = attrs.field(default=0, validator=v.at_least(0, owner="embedded"))
    host: str = "127.0.0.1"
    start_timeout_s: int = attrs.field(default=30, validator=v.at_least(1, high=MAX_WAIT_S, owner="embedded"))

    def __attrs_post_init__(self) -> None:
        if self.port > 65535:
            raise ConfigError(f"embedded.port must be a TCP port in 0..65535 (0 picks a free one), got {self.port}")
        if not _loopback(self.host):
            raise ConfigError(
                f"embedded.host must be a loopback address (127.0.0.1, ::1 or localhost): the embedded server holds "
                f"patient data and listens on this machine only; got {self.host!r}"
            )


@attrs.frozen
class CohortConfig:
    """Inclusion rules and the observation window."""

    min_age_years: float = attrs.field(default=18.0, validator=v.number(low=0, owner="cohort"))
    min_hospital_los_days: float = attrs.field(default=1.0, validator=v.number(low=0, owner="cohort"))
    min_icu_los_days: float = attrs.field(default=1.0, validator=v.number(low=0, owner="cohort"))
    # The query exports any window; a FeatureMatrix (preprocess) needs exactly 48 hours.
    window_hours: int = attrs.field(default=WINDOW_HOURS, validator=v.at_least(1, owner="cohort"))
    lookback_hours: int = attrs.field(default=24, validator=v.at_least(0, owner="cohort"))
    # "all": the admission's earliest ICU intime; "included": the earliest among its included stays.
    window_start: WindowStart = _choice("cohort", WindowStart, "all")
    # "" is the shipped resources/features.toml.
    features_file: str = ""


def _hour_bin(instance: Any, attribute: attrs.Attribute[int], value: int) -> None:
    if isinstance(value, bool) or not 0 <= value < WINDOW_HOURS:
        raise ConfigError(f"preprocess.{attribute.name} must be an hour bin in 0..{WINDOW_HOURS - 1}, got {value}")


@attrs.frozen
class PreprocessConfig:
    """FeatureMatrix building: window rule, splits and folds."""

    seed: int = attrs.field(default=42, validator=v.at_least(0, owner="preprocess"))
    train_fraction: float = attrs.field(
        default=0.70, validator=v.number(low=0, high=1, low_strict=True, owner="preprocess")
    )
    validation_fraction: float = attrs.field(default=0.15, validator=v.number(low=0, high=1, owner="preprocess"))
    test_fraction: float = attrs.field(default=0.15, validator=v.number(low=0, high=1, owner="preprocess"))
    n_folds: int = attrs.field(default=5, validator=v.at_least(2, owner="preprocess"))
    first_hour_max: int = attrs.field(default=3, validator=_hour_bin)
    last_hour_min: int = attrs.field(default=46, validator=_hour_bin)
    drop_unmeasured_vitals: bool = False

    def __attrs_post_init__(self) -> None:
        fractions = (self.train_fraction, self.validation_fraction, self.test_fraction)
        if abs(sum(fractions) - 1.0) > 1e-9:
            raise ConfigError(
                "preprocess.train_fraction, validation_fraction and test_fraction must sum to 1, got "
                + ", ".join(str(f) for f in fractions)
            )


@attrs.frozen
class SynthConfig:
    """The synthetic MIMIC-III generator (``lstm-adv synth``)."""

    admissions: int = attrs.field(default=1000, validator=v.at_least(1, owner="synth"))
    seed: int = attrs.field(default=0, validator=v.at_least(0, owner="synth"))
    schema: str = "synthetic"
    mortality: float = attrs.field(
        default=0.10, validator=v.number(low=0, high=1, low_strict=True, high_strict=True, owner="synth")
    )
    severity_effect: float = attrs.field(default=2.5, validator=v.number(low=0, high=20, owner="synth"))
    vital_hours: float = attrs.field(
        default=60.0, validator=v.number(low=0, high=24 * 365, low_strict=True, owner="synth")
    )
    lab_hours: float = attrs.field(
        default=60.0, validator=v.number(low=0, high=24 * 365, low_strict=True, owner="synth")
    )
    lab_lookback_hours: float = attrs.field(
        default=24.0, validator=v.number(low=0, high=24 * 365, low_strict=True, owner="synth")
    )


@attrs.frozen
class ModelConfig:
    """BiLSTM hyperparameters and training."""

    hidden_size: int = attrs.field(default=64, validator=v.at_least(1, high=MAX_WIDTH, owner="model"))
    num_layers: int = attrs.field(default=1, validator=v.at_least(1, high=MAX_LAYERS, owner="model"))
    lstm_activation: Activation = _choice("model", Activation, "tanh")
    dropout: float = attrs.field(default=0.2, validator=v.number(low=0, high=1, high_strict=True, owner="model"))
    fc_size: int = attrs.field(default=64, validator=v.at_least(1, high=MAX_WIDTH, owner="model"))
    fc_activation: Activation = _choice("model", Activation, "relu")
    optimizer: Optimizer = _choice("model", Optimizer, "adam")
    learning_rate: float = attrs.field(default=1e-3, validator=v.number(low=0, high=10, low_strict=True, owner="model"))
    batch_size: int = attrs.field(default=128, validator=v.at_least(1, owner="model"))
    max_epochs: int = attrs.field(default=50, validator=v.at_least(1, owner="model"))
    patience: int = attrs.field(default=8, validator=v.at_least(1, owner="model"))
    monitor: Monitor = _choice("model", Monitor, "auroc")
    imbalance: Imbalance = _choice("model", Imbalance, "weighted_sampling")
    grad_clip_norm: float = attrs.field(default=5.0, validator=v.number(low=0, owner="model"))
    seed: int = attrs.field(default=0, validator=v.at_least(0, owner="model"))
    device: Device = _choice("model", Device, "auto")
    eval_batch_size: int = attrs.field(default=2048, validator=v.at_least(1, owner="model"))
    bootstrap_samples: int = attrs.field(default=1000, validator=v.at_least(0, owner="model"))
    confidence: float = attrs.field(
        default=0.95, validator=v.number(low=0, high=1, low_strict=True, high_strict=True, owner="model")
    )
    calibration_bins: int = attrs.field(default=10, validator=v.at_least(1, owner="model"))
    decision: Decision = _choice("model", Decision, "threshold")


@attrs.frozen
class TuneModelConfig:
    """Optuna search over the model."""

    trials: int = attrs.field(default=50, validator=v.at_least(1, owner="tune_model"))
    epochs_per_trial: int = attrs.field(default=20, validator=v.at_least(1, owner="tune_model"))
    hidden_size_log2: tuple[int, int] = attrs.field(
        default=(5, 7), validator=v.ordered_range(low=0, high=14, owner="tune_model")
    )
    fc_size_log2: tuple[int, int] = attrs.field(
        default=(4, 8), validator=v.ordered_range(low=0, high=14, owner="tune_model")
    )
    batch_size_log2: tuple[int, int] = attrs.field(
        default=(5, 8), validator=v.ordered_range(low=0, high=14, owner="tune_model")
    )
    dropout: tuple[float, float] = attrs.field(
        default=(0.0, 0.5), validator=v.ordered_range(low=0, high=0.99, owner="tune_model")
    )
    learning_rate: tuple[float, float] = attrs.field(
        default=(1e-5, 1e-1), validator=v.ordered_range(low=0, high=10, low_strict=True, owner="tune_model")
    )
    lstm_activations: tuple[Activation, ...] = attrs.field(
        default=("relu", "tanh"), converter=_tuple, validator=v.some_of(ACTIVATIONS, owner="tune_model")
    )
    fc_activations: tuple[Activation, ...] = attrs.field(
        default=("relu", "tanh"), converter=_tuple, validator=v.some_of(ACTIVATIONS, owner="tune_model")
    )
    optimizers: tuple[Optimizer, ...] = attrs.field(
        default=("adam", "rmsprop", "sgd"), converter=_tuple, validator=v.some_of(OPTIMIZERS, owner="tune_model")
    )
    pruner_startup_trials: int = attrs.field(default=5, validator=v.at_least(0, owner="tune_model"))
    pruner_warmup_epochs: int = attrs.field(default=3, validator=v.at_least(0, owner="tune_model"))
    seed: int = attrs.field(default=0, validator=v.at_least(0, owner="tune_model"))
    storage_timeout_s: int = attrs.field(default=10, validator=v.at_least(1, high=MAX_WAIT_S, owner="tune_model"))
    start_from_defaults: bool = True


def _hours(instance: Any, attribute: attrs.Attribute[tuple[int, int]], value: tuple[int, int]) -> None:
    first, last = value
    if not 0 <= first < last <= WINDOW_HOURS:
        raise ConfigError(
            f"attack.hours must be [first, last) with 0 <= first < last <= {WINDOW_HOURS}; got [{first}, {last}]"
        )


def _batch_size(instance: Any, attribute: attrs.Attribute[Any], value: int | str) -> None:
    if value != "auto" and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ConfigError(f'attack.batch_size must be an integer ≥ 1 or "auto" (sized to the device), got {value!r}')


def _block_size(instance: Any, attribute: attrs.Attribute[Any], value: int | str) -> None:
    if value != "auto" and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ConfigError(f'attack.block_size must be an integer ≥ 1 or "auto" (by device), got {value!r}')


def _max_change(instance: Any, attribute: attrs.Attribute[Any], value: dict[str, float]) -> None:
    for name, bound in value.items():
        number = isinstance(bound, int | float) and not isinstance(bound, bool)
        if not number or math.isnan(bound) or bound < 0:
            raise ConfigError(
                f"attack.max_change.{name} must be a number ≥ 0 in the feature's clinical unit (inf: unbounded), "
                f"got {bound!r}"
            )


#: ``attack.block_size = "auto"``: samples per block on a CPU and on a GPU (where batches can grow to it).
AUTO_BLOCK = {"cpu": 256, "cuda": 16384}


@attrs.frozen
class AttackConfig:
    """The sparse L1 attack of `lstm-adv attack` (and of tune-attack and robustness)."""

    max_iterations: int = attrs.field(default=200, validator=v.at_least(1, owner="attack"))
    search_steps: int = attrs.field(default=5, validator=v.at_least(1, owner="attack"))
    include_misclassified: bool = False
    cells: Cells = _choice("attack", Cells, "record")
    record_prewindow: bool = True
    max_change: dict[str, float] = attrs.field(factory=dict, validator=_max_change)
    features: tuple[str, ...] = attrs.field(default=(), converter=_tuple)
    hours: tuple[int, int] = attrs.field(default=(0, WINDOW_HOURS), validator=_hours)
    candidates: int = attrs.field(default=4, validator=v.at_least(1, owner="attack"))
    swap_rounds: int = attrs.field(default=2, validator=v.at_least(0, owner="attack"))
    refine_rounds: int = attrs.field(default=4, validator=v.at_least(0, owner="attack"))
    batch_size: int | Literal["auto"] = attrs.field(default="auto", validator=_batch_size)
    block_size: int | Literal["auto"] = attrs.field(default="auto", validator=_block_size)
    device: Device = _choice("attack", Device, "auto")
    cudnn: bool = True


@attrs.frozen
class TuneAttackConfig:
    """Optuna search over the attack's settings."""

    trials: int = attrs.field(default=30, validator=v.at_least(1, owner="tune_attack"))
    objective: AttackObjective = _choice("tune_attack", AttackObjective, "pareto")
    min_success: float = attrs.field(default=0.9, validator=v.number(low=0, high=1, owner="tune_attack"))
    max_nonzero: int = attrs.field(default=20, validator=v.at_least(0, owner="tune_attack"))
    subset_size: int = attrs.field(default=256, validator=v.at_least(1, owner="tune_attack"))
    subset_seed: int = attrs.field(default=0, validator=v.at_least(0, owner="tune_attack"))
    chunks: int = attrs.field(default=4, validator=v.at_least(1, owner="tune_attack"))
    max_iterations: int = attrs.field(default=100, validator=v.at_least(1, owner="tune_attack"))
    kappa: tuple[float, float] = attrs.field(default=(0.0, 2.0), validator=v.ordered_range(low=0, owner="tune_attack"))
    lam: tuple[float, float] = attrs.field(
        default=(1e-3, 1.0), validator=v.ordered_range(low=0, low_strict=True, owner="tune_attack")
    )
    step_size: tuple[float, float] = attrs.field(
        default=(5e-3, 0.5), validator=v.ordered_range(low=0, low_strict=True, owner="tune_attack")
    )
    methods: tuple[L1Method, ...] = attrs.field(
        default=("ista", "fista", "adam", "greedy"),
        converter=_tuple,
        validator=v.some_of(L1_METHODS, owner="tune_attack"),
    )
    pruner_startup_trials: int = attrs.field(default=3, validator=v.at_least(0, owner="tune_attack"))
    pruner_warmup_steps: int = attrs.field(default=0, validator=v.at_least(0, owner="tune_attack"))
    seed: int = attrs.field(default=0, validator=v.at_least(0, owner="tune_attack"))
    storage_timeout_s: int = attrs.field(default=10, validator=v.at_least(1, high=MAX_WAIT_S, owner="tune_attack"))
    start_from_defaults: bool = True


@attrs.frozen
class AnalysisConfig:
    """Statistics and figures of an attack (``lstm-adv analyze``)."""

    top_k: int = attrs.field(default=5, validator=v.at_least(1, owner="analysis"))
    histogram_bins: int = attrs.field(default=30, validator=v.at_least(1, owner="analysis"))
    figure_dpi: int = attrs.field(default=150, validator=v.at_least(10, owner="analysis"))
    dense_l0_share: float = attrs.field(
        default=0.25, validator=v.number(low=0, high=1, low_strict=True, owner="analysis")
    )
    bootstrap_samples: int = attrs.field(default=1000, validator=v.at_least(1, owner="analysis"))
    confidence: float = attrs.field(
        default=0.95, validator=v.number(low=0, high=1, low_strict=True, high_strict=True, owner="analysis")
    )
    seed: int = attrs.field(default=0, validator=v.at_least(0, owner="analysis"))


def _step(instance: Any, attribute: attrs.Attribute[Any], value: float | str) -> None:
    if value == "auto":
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not (math.isfinite(value) and value > 0):
        raise ConfigError(f'pgd.step_size must be a finite number > 0 or "auto" (2.5·ε/iterations), got {value!r}')


@attrs.frozen
class PgdConfig:
    """Projected gradient descent, shared by defend and robustness."""

    step_size: float | Literal["auto"] = attrs.field(default="auto", validator=_step)
    iterations: int = attrs.field(default=10, validator=v.at_least(1, owner="pgd"))
    target: Literal["none", 0, 1] = attrs.field(default="none", validator=v.one_of(("none", 0, 1), owner="pgd"))
    random_start: bool = True
    loss: PgdLoss = _choice("pgd", PgdLoss, "ce")
    seed: int = attrs.field(default=0, validator=v.at_least(0, owner="pgd"))
    batch_size: int = attrs.field(default=1024, validator=v.at_least(1, owner="pgd"))

    @property
    def target_class(self) -> int | None:
        """The class targeted PGD pushes samples towards, ``None`` when untargeted."""
        return None if self.target == "none" else int(self.target)


@attrs.frozen
class DefendConfig:
    """Adversarial training (``lstm-adv defend``)."""

    method: DefenseMethod = _choice("defend", DefenseMethod, "adaptive")
    attack: PgdAttackName = _choice("defend", PgdAttackName, "pgd-linf")
    eps: float = attrs.field(default=0.05, validator=v.number(low=0, owner="defend"))
    epochs: int = attrs.field(default=10, validator=v.at_least(1, owner="defend"))
    mix: float = attrs.field(default=0.5, validator=v.number(low=0, high=1, owner="defend"))
    regenerate: Regenerate = _choice("defend", Regenerate, "batch")
    learning_rate: float = attrs.field(default=0.0, validator=v.number(low=0, high=10, owner="defend"))
    loss: DefenseLoss = _choice("defend", DefenseLoss, "ce")
    beta: float = attrs.field(default=6.0, validator=v.number(low=0, owner="defend"))
    l1_iterations: int = attrs.field(default=20, validator=v.at_least(1, owner="defend"))
    l1_search_steps: int = attrs.field(default=1, validator=v.at_least(1, owner="defend"))
    l1_example: SparseExample = _choice("defend", SparseExample, "sparse")
    monitor_samples: int = attrs.field(default=512, validator=v.at_least(0, owner="defend"))

    def __attrs_post_init__(self) -> None:
        if self.loss == "trades" and self.method != "adaptive":
            raise ConfigError(
                f"defend.loss = trades needs defend.method = adaptive (TRADES makes its examples against the current "
                f"weights); got method {self.method!r}"
            )


def _sweep(instance: Any, attribute: attrs.Attribute[tuple[float, ...]], value: tuple[float, ...]) -> None:
    if not value:
        raise ConfigError("robustness.eps is empty; give at least one budget, e.g. --eps 0,0.01,0.02")
    for eps in value:
        if isinstance(eps, bool) or not isinstance(eps, int | float) or not (math.isfinite(eps) and eps >= 0):
            raise ConfigError(f"robustness.eps values must be finite numbers ≥ 0, got {eps!r}")


@attrs.frozen
class RobustnessConfig:
    """Robustness curves (``lstm-adv robustness``)."""

    eps: tuple[float, ...] = attrs.field(default=(0.0, 0.01, 0.02, 0.05, 0.1), converter=_tuple, validator=_sweep)
    attack: PgdAttackName = _choice("robustness", PgdAttackName, "pgd-linf")
    split: str = attrs.field(
        default="test", converter=_canonical_split, validator=v.one_of(get_args(SplitName), owner="robustness")
    )
    include_original: bool = True
    l1_max_iterations: int = attrs.field(default=200, validator=v.at_least(0, owner="robustness"))
    obfuscation_iterations: int = attrs.field(default=100, validator=v.at_least(0, owner="robustness"))
    obfuscation_tolerance: float = attrs.field(default=0.02, validator=v.number(low=0, high=1, owner="robustness"))

    @property
    def sweep(self) -> tuple[float, ...]:
        """The ε values sorted, without duplicates."""
        return tuple(sorted({float(e) for e in self.eps}))


@attrs.frozen
class DemoConfig:
    """The main job (`lstm-adv demo`): small budgets so the whole pipeline runs in minutes on a laptop."""

    model_trials: int = attrs.field(default=8, validator=v.at_least(1, owner="demo"))
    model_activations: tuple[Activation, ...] = attrs.field(
        default=("tanh",), converter=_tuple, validator=v.some_of(ACTIVATIONS, owner="demo")
    )
    model_optimizers: tuple[Optimizer, ...] = attrs.field(
        default=("adam",), converter=_tuple, validator=v.some_of(OPTIMIZERS, owner="demo")
    )
    model_learning_rate: tuple[float, float] = attrs.field(
        default=(1e-4, 1e-2), validator=v.ordered_range(low=0, high=10, low_strict=True, owner="demo")
    )
    attack_trials: int = attrs.field(default=6, validator=v.at_least(1, owner="demo"))
    attack_subset: int = attrs.field(default=32, validator=v.at_least(1, owner="demo"))
    tune_attack_iterations: int = attrs.field(default=60, validator=v.at_least(1, owner="demo"))
    attack_iterations: int = attrs.field(default=200, validator=v.at_least(1, owner="demo"))
    attack_split: AttackSplit = _choice("demo", AttackSplit, "all")
    synthetic_seed: int = attrs.field(default=0, validator=v.at_least(0, owner="demo"))
    defend_epochs: int = attrs.field(default=3, validator=v.at_least(1, owner="demo"))
    robustness_eps: tuple[float, ...] = attrs.field(default=(0.0, 0.02, 0.05), converter=_tuple, validator=_sweep)
    robustness_l1_iterations: int = attrs.field(default=50, validator=v.at_least(0, owner="demo"))
    obfuscation_iterations: int = attrs.field(default=30, validator=v.at_least(0, owner="demo"))


@attrs.frozen
class Config:
    """The whole effective configuration of one invocation."""

    database: DatabaseConfig = DatabaseConfig()
    embedded: EmbeddedConfig = EmbeddedConfig()
    cohort: CohortConfig = CohortConfig()
    preprocess: PreprocessConfig = PreprocessConfig()
    synth: SynthConfig = SynthConfig()
    model: ModelConfig = ModelConfig()
    tune_model: TuneModelConfig = TuneModelConfig()
    tune_attack: TuneAttackConfig = TuneAttackConfig()
    attack: AttackConfig = AttackConfig()
    analysis: AnalysisConfig = AnalysisConfig()
    pgd: PgdConfig = PgdConfig()
    defend: DefendConfig = DefendConfig()
    robustness: RobustnessConfig = RobustnessConfig()
    demo: DemoConfig = DemoConfig()
