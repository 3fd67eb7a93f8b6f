"""lstm-adv: adversarial robustness of clinical time-series models."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("lstm-adv")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
