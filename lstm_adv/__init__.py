"""lstm-adv: adversarial robustness of clinical time-series models.

The Python API (``import lstm_adv as la``; see :mod:`lstm_adv.notebook`): :func:`load_run`,
:func:`latest`, :func:`runs`, :func:`load_model`, :func:`load_features`, :func:`attack_batch`
(adversarial inputs, δ and a per-sample table in one call), :class:`SparseAttack` (``x_adv =
SparseAttack(model)(x, y)``) and :func:`analysis_tables`. They are imported on first
use, so ``import lstm_adv`` (and the CLI's help) stays fast.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

try:
    __version__ = version("lstm-adv")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0+unknown"

if TYPE_CHECKING:
    from lstm_adv.attacks import L1Settings
    from lstm_adv.domain.decision import DecisionRule
    from lstm_adv.domain.feature_matrix import FeatureMatrix
    from lstm_adv.notebook import (
        AttackOutput,
        Model,
        PgdAttack,
        SparseAttack,
        analysis_tables,
        attack_batch,
        latest,
        load_features,
        load_model,
        load_run,
        runs,
    )

_PUBLIC = {
    "AttackOutput": "lstm_adv.notebook",
    "Model": "lstm_adv.notebook",
    "SparseAttack": "lstm_adv.notebook",
    "PgdAttack": "lstm_adv.notebook",
    "analysis_tables": "lstm_adv.notebook",
    "attack_batch": "lstm_adv.notebook",
    "latest": "lstm_adv.notebook",
    "load_features": "lstm_adv.notebook",
    "load_model": "lstm_adv.notebook",
    "load_run": "lstm_adv.notebook",
    "runs": "lstm_adv.notebook",
    "L1Settings": "lstm_adv.attacks",
    "DecisionRule": "lstm_adv.domain.decision",
    "FeatureMatrix": "lstm_adv.domain.feature_matrix",
}

__all__ = [
    "AttackOutput",
    "DecisionRule",
    "FeatureMatrix",
    "L1Settings",
    "Model",
    "PgdAttack",
    "SparseAttack",
    "__version__",
    "analysis_tables",
    "attack_batch",
    "latest",
    "load_features",
    "load_model",
    "load_run",
    "runs",
]


def __getattr__(name: str) -> Any:
    """Import a public name on first use."""
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'lstm_adv' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
