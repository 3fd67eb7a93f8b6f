"""Typed configuration. Defaults live in ``resources/defaults.toml``; see :func:`load_config`."""

from __future__ import annotations

import attrs


@attrs.frozen
class DatabaseConfig:
    """Where the MIMIC-III tables are and how long to wait for a connection."""

    schema: str = "mimiciii"
    connect_timeout_s: int = 5


@attrs.frozen
class EmbeddedConfig:
    """The toolkit's own PostgreSQL server."""

    port: int = 0
    host: str = "127.0.0.1"
    start_timeout_s: int = 30


@attrs.frozen
class CohortConfig:
    """Inclusion rules and the observation window."""

    min_age_years: float = 18.0
    min_hospital_los_days: float = 1.0
    min_icu_los_days: float = 1.0
    window_hours: int = 48
    lookback_hours: int = 24


@attrs.frozen
class PreprocessConfig:
    """FeatureMatrix building: window rule, splits and folds."""

    seed: int = 42
    train_fraction: float = 0.70
    validation_fraction: float = 0.15
    test_fraction: float = 0.15
    n_folds: int = 5
    first_hour_max: int = 3
    last_hour_min: int = 46


@attrs.frozen
class SynthConfig:
    """The synthetic MIMIC-III generator (``lstm-adv synth``)."""

    admissions: int = 1000
    seed: int = 0
    schema: str = "synthetic"
    mortality: float = 0.10
    severity_effect: float = 2.5
    vital_hours: float = 60.0
    lab_hours: float = 60.0
    lab_lookback_hours: float = 24.0


@attrs.frozen
class ModelConfig:
    """BiLSTM hyperparameters and training."""

    hidden_size: int = 64
    num_layers: int = 1
    lstm_activation: str = "tanh"
    dropout: float = 0.2
    fc_size: int = 64
    fc_activation: str = "relu"
    optimizer: str = "adam"
    learning_rate: float = 1e-3
    batch_size: int = 128
    max_epochs: int = 50
    patience: int = 8
    monitor: str = "auroc"
    imbalance: str = "weighted_sampling"
    grad_clip_norm: float = 5.0
    seed: int = 0
    device: str = "auto"
    eval_batch_size: int = 2048
    bootstrap_samples: int = 1000
    confidence: float = 0.95
    calibration_bins: int = 10


@attrs.frozen
class TuneModelConfig:
    """Optuna search over the model."""

    trials: int = 50
    epochs_per_trial: int = 20
    hidden_size_log2: tuple[int, int] = (5, 7)
    fc_size_log2: tuple[int, int] = (4, 8)
    batch_size_log2: tuple[int, int] = (5, 8)
    dropout: tuple[float, float] = (0.0, 0.5)
    learning_rate: tuple[float, float] = (1e-5, 1e-1)
    lstm_activations: tuple[str, ...] = ("relu", "tanh")
    fc_activations: tuple[str, ...] = ("relu", "tanh")
    optimizers: tuple[str, ...] = ("adam", "rmsprop", "sgd")
    pruner_startup_trials: int = 5
    pruner_warmup_epochs: int = 3
    seed: int = 0
    storage_timeout_s: int = 10


@attrs.frozen
class AttackConfig:
    """The sparse L1 attack of `lstm-adv attack`."""

    max_iterations: int = 1000
    include_misclassified: bool = False
    features: tuple[str, ...] = ()
    hours: tuple[int, int] = (0, 48)
    device: str = "auto"


@attrs.frozen
class TuneAttackConfig:
    """Optuna search over the attack's settings."""

    trials: int = 30
    objective: str = "sparsity"
    max_nonzero: int = 20
    subset_size: int = 256
    subset_seed: int = 0
    chunks: int = 4
    max_iterations: int = 300
    kappa: tuple[float, float] = (0.0, 2.0)
    lam: tuple[float, float] = (1e-7, 1.0)
    step_size: tuple[float, float] = (1e-5, 1.0)
    methods: tuple[str, ...] = ("ista", "fista", "adam")
    batch_size_log2: tuple[int, int] = (5, 10)
    pruner_startup_trials: int = 3
    pruner_warmup_steps: int = 0
    seed: int = 0
    storage_timeout_s: int = 10
    start_from_defaults: bool = True


@attrs.frozen
class AnalysisConfig:
    """Statistics and figures of an attack (``lstm-adv analyze``)."""

    top_k: int = 5
    histogram_bins: int = 30
    figure_dpi: int = 150


@attrs.frozen
class PgdConfig:
    """Projected gradient descent, shared by defend and robustness."""

    step_size: float = 0.0
    iterations: int = 10
    target: int = -1
    random_start: bool = True
    loss: str = "ce"
    seed: int = 0
    batch_size: int = 1024


@attrs.frozen
class DefendConfig:
    """Adversarial training (``lstm-adv defend``)."""

    method: str = "adaptive"
    attack: str = "pgd-linf"
    eps: float = 0.05
    epochs: int = 10
    mix: float = 0.5
    regenerate: str = "batch"
    learning_rate: float = 0.0


@attrs.frozen
class RobustnessConfig:
    """Robustness curves (``lstm-adv robustness``)."""

    eps: tuple[float, ...] = (0.0, 0.01, 0.02, 0.05, 0.1)
    attack: str = "pgd-linf"
    split: str = "test"
    include_original: bool = True
    l1_max_iterations: int = 1000


@attrs.frozen
class DemoConfig:
    """The main job (`lstm-adv demo`): small budgets so the whole pipeline runs in minutes on a laptop."""

    model_trials: int = 8
    model_activations: tuple[str, ...] = ("tanh",)
    model_optimizers: tuple[str, ...] = ("adam",)
    model_learning_rate: tuple[float, float] = (1e-4, 1e-2)
    attack_trials: int = 6
    attack_subset: int = 32
    tune_attack_iterations: int = 150
    attack_iterations: int = 500
    attack_split: str = "all"
    synthetic_seed: int = 0


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
