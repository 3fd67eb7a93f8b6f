"""Optuna studies of the two tuning stages: where a study lives, opening it, optimizing, and its trials.

A study is named by its tuning run's id and lives in ``study.journal`` (an Optuna journal file)
inside the run folder, or in a database given as a URL (``postgresql://…``), where any number of
processes on any number of machines can work on it. A resumed run keeps the study's name and
place. :func:`optimize` turns Ctrl-C into the status ``interrupted``: finished trials are kept.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs
import optuna

from lstm_adv.domain.errors import ConfigError, DatabaseError
from lstm_adv.redaction import has_hidden_password, redact, scrub
from lstm_adv.results.artifacts import STUDY_FILE
from lstm_adv.results.store import Run

log = logging.getLogger(__name__)

FILE_STORAGE = "file"
TrialCallback = Callable[[optuna.Study, optuna.trial.FrozenTrial], None]


@attrs.frozen
class StudyPlace:
    """Where the study lives: ``url`` for a database, else the journal file ``journal``."""

    name: str
    url: str | None
    journal: Path | None

    @property
    def shown(self) -> str:
        """The storage as stored in the summary (``file`` or the URL without its password)."""
        return FILE_STORAGE if self.url is None else redact(self.url)

    def storage(self, timeout_s: int) -> optuna.storages.BaseStorage:
        """Open the storage (a journal file, or a database checked to be reachable)."""
        if self.url is not None:
            return open_database_storage(self.url, timeout_s)
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        assert self.journal is not None
        return JournalStorage(JournalFileBackend(str(self.journal)))


def study_place(
    folder: Path, run_id: str, url: str | None, resume: Run | None, *, study_name: str | None
) -> StudyPlace:
    """The place of a tuning run's study: a resumed run's study (its journal copied into ``folder``) or a new one."""
    place = StudyPlace(name=study_name or run_id, url=url, journal=None if url else folder / STUDY_FILE)
    if resume is not None and place.journal is not None:
        shutil.copyfile(resume.file(STUDY_FILE), place.journal)
    return place


def resumed_url(storage: str | None, resume: Run | None, shown: str | None) -> str | None:
    """The storage URL of a (resumed) study: ``storage`` if given, else the resumed run's database URL."""
    if storage is not None:
        return storage
    if resume is None or shown in (None, FILE_STORAGE):
        return None
    if has_hidden_password(str(shown)):
        raise ConfigError(f"tuning run {resume.id} used the storage {shown}; pass --storage with its password")
    return shown


def database_url(url: str) -> str:
    """A SQLAlchemy URL: plain ``postgresql://`` is given the installed psycopg (3) driver."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def open_database_storage(url: str, timeout_s: int) -> optuna.storages.RDBStorage:
    """An Optuna RDB storage, connecting once; an unreachable or malformed URL is a :class:`DatabaseError`."""
    from sqlalchemy.exc import ArgumentError, SQLAlchemyError

    url = database_url(url)
    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("postgresql"):
        kwargs["connect_args"] = {"connect_timeout": timeout_s}
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
    except (SQLAlchemyError, ArgumentError, ImportError, ValueError) as exc:
        reason = scrub(str(getattr(exc, "orig", None) or exc).strip().splitlines()[0], url)
        raise DatabaseError(
            f"cannot use the Optuna storage {redact(url)}: {reason}; check the URL and that the server is "
            "running, or leave out --storage to keep the study in a file inside the run"
        ) from None


def open_study(place: StudyPlace, *, timeout_s: int, seed: int, pruner: optuna.pruners.BasePruner) -> optuna.Study:
    """Create the study at ``place`` or load it when it exists (TPE sampler seeded with ``seed``)."""
    return optuna.create_study(
        study_name=place.name,
        storage=place.storage(timeout_s),
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=pruner,
        direction="maximize",
        load_if_exists=True,
    )


def optimize(
    study: optuna.Study,
    objective: Callable[[optuna.Trial], float],
    *,
    n_trials: int,
    callbacks: Sequence[TrialCallback] = (),
    what: str = "tuning",
) -> str:
    """Run ``n_trials`` trials; ``complete``, or ``interrupted`` after Ctrl-C (finished trials are kept)."""
    try:
        if n_trials > 0:
            study.optimize(objective, n_trials=n_trials, callbacks=list(callbacks) or None, catch=())
    except KeyboardInterrupt:
        log.warning("%s interrupted: finished trials are kept; continue with --resume", what)
        return "interrupted"
    return "complete"


def state_counts(trials: Sequence[optuna.trial.FrozenTrial]) -> dict[str, int]:
    """How many trials ended in each state (``complete``, ``pruned``, ``fail``, ``running``, …)."""
    states = [t.state.name.lower() for t in trials]
    return {state: states.count(state) for state in sorted(set(states))}
