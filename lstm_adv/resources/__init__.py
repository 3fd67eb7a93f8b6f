"""Data shipped with the toolkit: feature definitions, configuration defaults, the MIMIC-III demo."""

from __future__ import annotations

from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path

from lstm_adv.domain.errors import FeatureSpecError
from lstm_adv.domain.features import FeatureDefinitions, FeatureSpec

DEFAULT_FEATURES = "features.toml"
# Feature definition files shipped beside the default; `--features NAME` finds them by name.
SHIPPED_FEATURES = (DEFAULT_FEATURES, "features_serum.toml")


def resource(name: str) -> Traversable:
    """A file or folder shipped under ``lstm_adv/resources``."""
    return files("lstm_adv.resources").joinpath(name)


def load_feature_spec() -> FeatureSpec:
    """The shipped feature definitions (``resources/features.toml``), validated."""
    text = resource(DEFAULT_FEATURES).read_text(encoding="utf-8")
    return FeatureSpec.from_toml(text, origin=DEFAULT_FEATURES)


def read_feature_definitions(path: str | Path | None = None) -> FeatureDefinitions:
    """A features file, validated: ``path`` if it exists, else the shipped file of that name.

    ``None`` or ``""`` gives the shipped default, ``features.toml``. A bad file raises a
    :class:`FeatureSpecError` naming the file, the feature and the field.
    """
    if path is None or str(path) == "":
        path = DEFAULT_FEATURES
    given = Path(path)
    if given.is_file():
        return FeatureDefinitions.from_text(_read(given), name=str(path))
    if str(path) in SHIPPED_FEATURES:
        return FeatureDefinitions.from_text(resource(str(path)).read_text(encoding="utf-8"), name=str(path))
    raise FeatureSpecError(
        f"features file {path} does not exist; give the path of a TOML file in the format of "
        f"lstm_adv/resources/features.toml, or a shipped one: {', '.join(SHIPPED_FEATURES)}"
    )


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise FeatureSpecError(f"features file {path} cannot be read: {exc}") from None
