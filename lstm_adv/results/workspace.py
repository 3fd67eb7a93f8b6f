"""Where the toolkit keeps its state: runs and the embedded database, in one project-local folder."""

from __future__ import annotations

import os
from pathlib import Path

import attrs

from lstm_adv.domain.errors import ConfigError
from lstm_adv.results.store import RunStore

HOME_ENV = "LSTM_ADV_HOME"
DEFAULT_HOME = ".lstm-adv"
# Room for what lives inside the home: runs/.tmp/<run id>/trials/<n>/model.pt and the like.
_INSIDE_BYTES = 128


@attrs.frozen
class Workspace:
    """The folder holding ``runs/`` (the run store) and ``pg/`` (the embedded PostgreSQL)."""

    home: Path

    @classmethod
    def locate(cls, explicit: Path | None = None) -> Workspace:
        """``explicit``, else ``$LSTM_ADV_HOME``, else ``./.lstm-adv``."""
        home = explicit or Path(os.environ.get(HOME_ENV) or DEFAULT_HOME)
        home = home.expanduser().absolute()
        check_home_length(home)
        return cls(home=home)

    @property
    def store(self) -> RunStore:
        """The run store."""
        return RunStore(self.home / "runs")

    @property
    def pg_dir(self) -> Path:
        """The embedded PostgreSQL server's folder."""
        return self.home / "pg"


def check_home_length(home: Path) -> None:
    """A home whose path, or one of whose folder names, is longer than the system allows is a :class:`ConfigError`."""
    name_max, path_max = _limits(home)
    shown = _shorten(str(home))
    for part in home.parts:
        if len(os.fsencode(part)) > name_max:
            raise ConfigError(
                f"home folder {shown}: the folder name {_shorten(part, 24)} is {len(os.fsencode(part))} bytes long, "
                f"this system allows {name_max}; choose a shorter --home (or $LSTM_ADV_HOME)"
            )
    size = len(os.fsencode(str(home)))
    if size > path_max - _INSIDE_BYTES:
        raise ConfigError(
            f"home folder {shown} is {size} bytes long, this system allows {path_max - _INSIDE_BYTES} (leaving room "
            "for the runs inside it); choose a shorter --home (or $LSTM_ADV_HOME)"
        )


def _limits(path: Path) -> tuple[int, int]:
    """NAME_MAX and PATH_MAX of the file system holding ``path`` (its nearest existing folder)."""
    existing = next((p for p in (path, *path.parents) if _is_dir(p)), Path("/"))
    try:
        return os.pathconf(existing, "PC_NAME_MAX"), os.pathconf(existing, "PC_PATH_MAX")
    except (OSError, ValueError):
        return 255, 4096


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except OSError:  # e.g. a name too long to look up
        return False


def _shorten(text: str, keep: int = 60) -> str:
    return text if len(text) <= keep else f"{text[: keep // 2]}…{text[-keep // 2 :]}"


def locate_home(home: str | Path | None = None) -> Path:
    """The workspace home: ``home``, else ``$LSTM_ADV_HOME``, else the nearest ``.lstm-adv`` above the cwd.

    Quarto runs a document from its own folder (``reports/``), so a plain ``./.lstm-adv`` would miss the
    workspace of the project root; looking upwards finds it.
    """
    if home is not None or os.environ.get(HOME_ENV):
        return Workspace.locate(Path(home) if home is not None else None).home
    cwd = Path.cwd()
    for folder in (cwd, *cwd.parents):
        if (folder / DEFAULT_HOME).is_dir():
            return folder / DEFAULT_HOME
    return Workspace.locate(None).home
