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
    """FeatureMatrix building (issue: preprocess stage). Owned by lstm_adv/preprocess.py."""


@attrs.frozen
class SynthConfig:
    """The synthetic MIMIC-III generator. Owned by lstm_adv/synth.py."""


@attrs.frozen
class ModelConfig:
    """BiLSTM training. Owned by lstm_adv/train.py."""


@attrs.frozen
class TuneModelConfig:
    """Optuna search over the model. Owned by lstm_adv/tune_model.py."""


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
