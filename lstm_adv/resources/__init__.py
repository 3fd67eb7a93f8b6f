"""Data shipped with the toolkit: feature definitions, configuration defaults, the MIMIC-III demo."""

from __future__ import annotations

from importlib.resources import files
from importlib.resources.abc import Traversable

from lstm_adv.domain.features import FeatureSpec


def resource(name: str) -> Traversable:
    """A file or folder shipped under ``lstm_adv/resources``."""
    return files("lstm_adv.resources").joinpath(name)


def load_feature_spec() -> FeatureSpec:
    """The shipped feature definitions (``resources/features.toml``), validated."""
    text = resource("features.toml").read_text(encoding="utf-8")
    return FeatureSpec.from_toml(text, origin="features.toml")
