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
