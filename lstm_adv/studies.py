"""Optuna studies of the two tuning stages: where a study lives, opening it, optimizing, and its trials.

A study is named by its tuning run's id and lives in ``study.journal`` (an Optuna journal file)
inside the run folder, or in a database given as a URL (``postgresql://…``), where any number of
processes on any number of machines can work on it. A resumed run keeps the study's name and
place. :func:`optimize` turns Ctrl-C into the status ``interrupted``: finished trials are kept.

Resuming continues the search instead of repeating it:

- :class:`HistorySeededSampler` re-seeds TPE before every trial from the seed and the number of
  finished trials it proposed, so a proposal depends only on the seed and the study's finished
  history, never on how often the study was interrupted and resumed: with one worker, a resumed
  study proposes exactly what an uninterrupted one with the same seed proposes.
- A trial stopped by Ctrl-C is marked ``interrupted`` (user attribute), so are trials a killed
  process left running; :func:`open_study` of a resumed run queues each interrupted trial's
  parameters once more, to be re-run first. Interrupted trials are not counted (:func:`counted`)
  toward the number of trials asked for. Resume a study only while no worker is working on it.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, cast

import attrs
import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState

from lstm_adv.domain.errors import ConfigError, DatabaseError
from lstm_adv.interrupts import (
    INTERRUPTED,
    ShieldedStorage,
    deferred_interrupts,
    marking_interrupts,
    stop_if_signalled,
)
from lstm_adv.redaction import has_hidden_password, redact, scrub
from lstm_adv.results.artifacts import STUDY_FILE
from lstm_adv.results.store import Run

log = logging.getLogger(__name__)

FILE_STORAGE = "file"
TrialCallback = Callable[[optuna.Study, optuna.trial.FrozenTrial], None]
#: User attribute of a re-run: the number of the interrupted trial whose parameters it repeats.
REPLAYS = "replays"
_HISTORY = (TrialState.COMPLETE, TrialState.PRUNED)
_FAILED_TRIAL = re.compile(r"Trial \d+ failed with ")


@attrs.frozen
class StudyPlace:
    """Where the study lives: ``url`` for a database, else the journal file ``journal``."""

    name: str
    url: str | None
    journal: Path | None
    resumed: bool = False

    @property
    def shown(self) -> str:
        """The storage as stored in the summary (``file`` or the URL without its password)."""
        return FILE_STORAGE if self.url is None else redact(self.url)

    def storage(self, timeout_s: int) -> ShieldedStorage:
        """Open the storage (a journal file, or a database checked to be reachable), shielded from Ctrl-C."""
        if self.url is not None:
            return ShieldedStorage(open_database_storage(self.url, timeout_s))
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        assert self.journal is not None
        return ShieldedStorage(JournalStorage(JournalFileBackend(str(self.journal))))


def study_place(
    folder: Path, run_id: str, url: str | None, resume: Run | None, *, study_name: str | None
) -> StudyPlace:
    """The place of a tuning run's study: a resumed run's study (its journal copied into ``folder``) or a new one."""
    place = StudyPlace(
        name=study_name or run_id, url=url, journal=None if url else folder / STUDY_FILE, resumed=resume is not None
    )
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


def _embedded_options(url: str) -> dict[str, str]:
    """For the embedded server's URL, its password and TLS setting given explicitly (see
    :func:`lstm_adv.database.connection.embedded_options`); the process then also drops ``PGSERVICE`` and
    ``PGSERVICEFILE``, whose service libpq would look up for every pooled connection."""
    from lstm_adv.database.connection import embedded_options

    scheme, _, rest = url.partition("://")
    try:
        options = embedded_options(f"postgresql://{rest}") if scheme.startswith("postgresql") else {}
    except DatabaseError:
        return {}
    for name in ("PGSERVICE", "PGSERVICEFILE"):
        if options and os.environ.pop(name, None) is not None:
            log.info("%s is ignored for the embedded server's storage", name)
    return options


def open_database_storage(url: str, timeout_s: int) -> optuna.storages.RDBStorage:
    """An Optuna RDB storage, connecting once; an unreachable or malformed URL is a :class:`DatabaseError`."""
    from sqlalchemy.exc import ArgumentError, SQLAlchemyError

    url = database_url(url)
    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("postgresql"):
        embedded = _embedded_options(url)
        kwargs["connect_args"] = {"connect_timeout": timeout_s, **embedded}
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
    except (SQLAlchemyError, ArgumentError, ImportError, ValueError) as exc:
        reason = scrub(str(getattr(exc, "orig", None) or exc).strip().splitlines()[0], url)
        raise DatabaseError(
            f"cannot use the Optuna storage {redact(url)}: {reason}; check the URL and that the server is "
            "running, or leave out --storage to keep the study in a file inside the run"
        ) from None


def open_study(
    place: StudyPlace,
    *,
    timeout_s: int,
    seed: int,
    pruner: optuna.pruners.BasePruner | None = None,
    directions: Sequence[str] = ("maximize",),
    metric_names: Sequence[str] = (),
) -> optuna.Study:
    """Create the study at ``place`` or load it when it exists (:class:`HistorySeededSampler` with ``seed``).

    Several ``directions`` make a multi-objective study (no pruning); ``metric_names`` label the
    objectives (optuna-dashboard shows them). For a resumed run, interrupted trials are queued to be
    re-run first (:func:`requeue_interrupted`).
    """
    study = optuna.create_study(
        study_name=place.name,
        storage=cast(optuna.storages.BaseStorage, place.storage(timeout_s)),  # a proxy of one
        sampler=HistorySeededSampler(seed),
        pruner=pruner if len(directions) == 1 else None,
        directions=[cast(Literal["minimize", "maximize"], d) for d in directions],
        load_if_exists=True,
    )
    if metric_names:
        with warnings.catch_warnings():  # set_metric_names is marked experimental; it is what the dashboard reads
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(list(metric_names))
    if place.resumed:
        requeue_interrupted(study)
    return study


class HistorySeededSampler(optuna.samplers.BaseSampler):
    """TPE whose random state is re-seeded before each trial from ``seed`` and the finished trials it proposed.

    A plain seeded TPE draws from one random stream that starts afresh in every process, so a resumed
    study would propose the first trials' parameters again.
    """

    def __init__(self, seed: int) -> None:
        self._seed = seed
        self._tpe = optuna.samplers.TPESampler(seed=seed)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        finished = study.get_trials(deepcopy=False, states=_HISTORY)
        self._tpe = optuna.samplers.TPESampler(seed=trial_seed(self._seed, sum(map(_proposed, finished))))
        self._tpe.before_trial(study, trial)

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        space: dict[str, BaseDistribution] = self._tpe.infer_relative_search_space(study, trial)
        return space

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        params: dict[str, Any] = self._tpe.sample_relative(study, trial, search_space)
        return params

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        return self._tpe.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(
        self, study: optuna.Study, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None
    ) -> None:
        self._tpe.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        """Nothing: the random state is a function of the seed and the history, on purpose."""


def trial_seed(seed: int, proposed: int) -> int:
    """The sampler's seed for the trial that follows ``proposed`` finished trials the sampler proposed.

    The first is ``seed`` itself, so a new study starts as a plain ``TPESampler(seed=seed)`` starts.
    """
    return seed if proposed == 0 else int(np.random.SeedSequence([seed, proposed]).generate_state(1)[0])


def _proposed(trial: FrozenTrial) -> bool:
    """Whether the sampler proposed ``trial`` (a re-run counts as the trial it repeats; a queued trial does not)."""
    return not trial.system_attrs.get("fixed_params")  # Optuna's mark of a queued trial; a re-run queues none


def requeue_interrupted(study: optuna.Study) -> list[int]:
    """Queue the parameters of every interrupted trial once more; returns their numbers.

    Trials still ``RUNNING`` were left by a stopped process: they are marked interrupted and failed.
    """
    trials = study.get_trials(deepcopy=False)
    replayed = {t.user_attrs.get(REPLAYS) for t in trials}
    queued = []
    for trial in trials:
        if trial.state == TrialState.RUNNING:
            # the storage is the only way to tag a trial that no Trial object in this process holds
            study._storage.set_trial_user_attr(trial._trial_id, INTERRUPTED, True)
            study.tell(trial.number, state=TrialState.FAIL)
        elif not is_interrupted(trial):
            continue
        if trial.number not in replayed:
            # A queued trial is queued again with what was queued; a proposed one is proposed afresh: the sampler's
            # seed comes from the same history, so it draws the same parameters (all of them, even where the stop
            # came while the trial was still drawing: fixing the ones it had would shift the draws of the rest).
            fixed = dict(trial.system_attrs.get("fixed_params") or {})
            study.enqueue_trial(fixed, user_attrs={REPLAYS: trial.number})
            queued.append(trial.number)
    if queued:
        log.info("interrupted trial(s) %s of study %s are re-run first", queued, study.study_name)
    return queued


def is_interrupted(trial: FrozenTrial) -> bool:
    """Whether ``trial`` was stopped by Ctrl-C / SIGTERM (or left running by a killed process)."""
    return trial.state != TrialState.COMPLETE and bool(trial.user_attrs.get(INTERRUPTED))


def trial_state(trial: FrozenTrial) -> str:
    """``complete``, ``pruned``, ``fail``, ``running``, ``waiting``, or ``interrupted``."""
    return INTERRUPTED if is_interrupted(trial) else trial.state.name.lower()


def counted(study: optuna.Study) -> int:
    """Trials that count toward a requested number: all but interrupted and still queued ones."""
    trials = study.get_trials(deepcopy=False)
    return sum(1 for t in trials if t.state != TrialState.WAITING and not is_interrupted(t))


def budget(study: optuna.Study, trials: int, resumed_budget: int | None) -> int:
    """The counted trials a run of ``study`` aims for: a resumed study's own budget (``resumed_budget``, when the
    user gave no ``--trials``), else what it has plus ``trials`` new ones."""
    return resumed_budget if resumed_budget is not None else counted(study) + trials


def stop_at(target: int) -> TrialCallback:
    """A callback that stops the study (in every worker) once :func:`counted` reaches ``target``."""

    def stop(study: optuna.Study, trial: FrozenTrial) -> None:
        if counted(study) >= target:
            study.stop()

    return stop


def optimize(
    study: optuna.Study,
    objective: Callable[[optuna.Trial], Any],
    *,
    n_trials: int,
    callbacks: Sequence[TrialCallback] = (),
    what: str = "tuning",
) -> str:
    """Run ``n_trials`` trials; ``complete``, or ``interrupted`` after Ctrl-C (finished trials are kept).

    A trial stopped by Ctrl-C (or SIGTERM, where the CLI turns it into Ctrl-C) is marked interrupted,
    and so is one this process had started when the signal came; Optuna's traceback is not shown.
    """
    try:
        with _quiet_failed_trials(), deferred_interrupts():
            if n_trials > 0:
                study.optimize(
                    marking_interrupts(objective), n_trials=n_trials, callbacks=[stop_if_signalled, *callbacks]
                )
    except KeyboardInterrupt:
        log.info("%s interrupted: finished trials are kept; continue with --resume", what)
        storage = study._storage  # the storage Optuna uses: ShieldedStorage for studies opened here
        if isinstance(storage, ShieldedStorage):
            storage.settle_started()
        return "interrupted"
    return "complete"


@contextmanager
def _quiet_failed_trials() -> Iterator[None]:
    """Drop Optuna's "Trial N failed …" warnings and their traceback: the error itself propagates (no trial
    failure is caught), so the CLI reports it once, in one line when it is the toolkit's or Ctrl-C."""
    logger = logging.getLogger("optuna.study._optimize")

    def keep(record: logging.LogRecord) -> bool:
        if not _FAILED_TRIAL.match(record.getMessage()):
            return True
        log.debug("%s", record.getMessage())
        return False

    logger.addFilter(keep)
    try:
        yield
    finally:
        logger.removeFilter(keep)


def state_counts(trials: Sequence[optuna.trial.FrozenTrial]) -> dict[str, int]:
    """How many trials ended in each state (``complete``, ``pruned``, ``interrupted``, ``running``, …)."""
    states = [trial_state(t) for t in trials]
    return {state: states.count(state) for state in sorted(set(states))}
