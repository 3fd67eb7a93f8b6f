"""Where the toolkit keeps its state: runs and the embedded database, in one project-local folder."""

from __future__ import annotations

import os
from pathlib import Path

import attrs

from lstm_adv.results.store import RunStore

HOME_ENV = "LSTM_ADV_HOME"
DEFAULT_HOME = ".lstm-adv"


@attrs.frozen
class Workspace:
    """The folder holding ``runs/`` (the run store) and ``pg/`` (the embedded PostgreSQL)."""

    home: Path

    @classmethod
    def locate(cls, explicit: Path | None = None) -> Workspace:
        """``explicit``, else ``$LSTM_ADV_HOME``, else ``./.lstm-adv``."""
        home = explicit or Path(os.environ.get(HOME_ENV) or DEFAULT_HOME)
        return cls(home=home.expanduser().absolute())

    @property
    def store(self) -> RunStore:
        """The run store."""
        return RunStore(self.home / "runs")

    @property
    def pg_dir(self) -> Path:
        """The embedded PostgreSQL server's folder."""
        return self.home / "pg"


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
