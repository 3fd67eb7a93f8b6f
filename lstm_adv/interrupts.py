"""Ctrl-C and SIGTERM in an Optuna study: where they may stop it, and marking what they stopped.

Optuna stopped half-way through recording a trial can leave its storage unusable (a journal file's
lock held, a trial half-written) or fail with an error of its own. So while :func:`deferred_interrupts`
is active, a signal stops the study only inside the objective and outside any storage call
(:class:`ShieldedStorage` counts those); one that comes anywhere else waits until the next objective
starts, a trial has been recorded (:func:`stop_if_signalled`), or the study ends.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

#: User attribute of a trial stopped by Ctrl-C / SIGTERM (or left running by a killed process).
INTERRUPTED = "interrupted"
Handler = Callable[[int, FrameType | None], Any]


def marking_interrupts(objective: Callable[[optuna.Trial], Any]) -> Callable[[optuna.Trial], Any]:
    """``objective``, with signals let through while it runs and the trial marked interrupted when one stops it."""

    def run(trial: optuna.Trial) -> Any:
        _GATE.open = True
        try:
            _GATE.release()  # a signal that came while Optuna prepared the trial stops it now
            return objective(trial)
        except KeyboardInterrupt:
            _GATE.open = False
            trial.set_user_attr(INTERRUPTED, True)
            raise
        finally:
            _GATE.open = False

    return run


def stop_if_signalled(study: optuna.Study, trial: FrozenTrial) -> None:
    """A callback: a signal that came while Optuna recorded the trial stops the study now that it is stored."""
    _GATE.release()


class _Gate:
    """Whether a signal may stop the study now; the one held back until it may."""

    def __init__(self) -> None:
        self.depth = 0  # storage calls in progress
        self.open = False  # the objective is running
        self.pending: tuple[Handler, int] | None = None

    @property
    def passes(self) -> bool:
        """Whether a signal is handled at once."""
        return self.open and self.depth == 0

    @contextmanager
    def closed(self) -> Iterator[None]:
        """Hold signals back for one storage call."""
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1
        if self.open:
            self.release()

    def release(self) -> None:
        """Handle a held-back signal now (its handler raises KeyboardInterrupt), outside any storage call."""
        if self.depth == 0 and self.pending is not None:
            handler, signum = self.pending
            self.pending = None
            handler(signum, None)


_GATE = _Gate()


@contextmanager
def deferred_interrupts() -> Iterator[None]:
    """While the block runs, SIGINT and SIGTERM (where Python handles them) stop the study only where it is safe."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    for signum, handler in previous.items():
        if callable(handler):
            signal.signal(signum, _deferring(handler))
    try:
        yield
    finally:
        for signum, handler in previous.items():
            if callable(handler):
                signal.signal(signum, handler)
        _GATE.open = False
        _GATE.release()


def _deferring(handler: Handler) -> Handler:
    def handle(signum: int, frame: FrameType | None) -> None:
        if _GATE.passes:
            handler(signum, frame)
        else:
            _GATE.pending = _GATE.pending or (handler, signum)

    return handle


class ShieldedStorage:
    """An Optuna storage whose every call runs to its end (see :class:`_Gate`); it also remembers the trials
    this process started, so that an interrupted process can mark those it leaves unfinished."""

    def __init__(self, storage: optuna.storages.BaseStorage) -> None:
        self._storage = storage
        self._started: set[int] = set()

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._storage, name)
        if not callable(attribute):
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            with _GATE.closed():
                result = attribute(*args, **kwargs)
                self._track(name, args, kwargs, result)
            return result

        return call

    def _track(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any], result: Any) -> None:
        if name == "create_new_trial" and (kwargs.get("template_trial") or [*args, None][1]) is None:
            self._started.add(result)
        elif name == "set_trial_state_values":
            trial_id, state = args[0], kwargs.get("state", args[1] if len(args) > 1 else None)
            if state != TrialState.RUNNING:
                self._started.discard(trial_id)
            elif result:  # False: another process took the queued trial first
                self._started.add(trial_id)

    def settle_started(self) -> None:
        """Mark the trials this process started and did not finish as interrupted failures."""
        for trial_id in sorted(self._started):
            with _GATE.closed(), contextlib.suppress(RuntimeError):  # finished meanwhile: nothing to mark
                self._storage.set_trial_user_attr(trial_id, INTERRUPTED, True)
                self._storage.set_trial_state_values(trial_id, TrialState.FAIL)
        self._started.clear()
