"""Shared CLI plumbing: global options, the error boundary, consoles."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

import attrs
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from typer.core import TyperGroup

from lstm_adv.config import Config
from lstm_adv.domain.errors import LstmAdvError, RunInterruptedError
from lstm_adv.results.config_file import load_config
from lstm_adv.results.store import Run
from lstm_adv.results.workspace import Workspace

console = Console()
err_console = Console(stderr=True)
#: The exit code of a command stopped by Ctrl-C or SIGTERM (128 + SIGINT, as shells report it).
EXIT_INTERRUPTED = 130


def print_error(message: str) -> None:
    """One red line on stderr."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, markup=True, soft_wrap=True)


def print_interrupted(message: str) -> None:
    """One plain line on stderr saying what an interrupted command kept and how to go on."""
    err_console.print(message, highlight=False, markup=False, soft_wrap=True)


class ErrorBoundaryGroup(TyperGroup):
    """The top-level group: a toolkit error becomes one red line and exit code 1, never a traceback.

    Ctrl-C and SIGTERM (what cluster schedulers send) stop a command alike: one line, exit code 130.
    """

    def invoke(self, ctx: Any) -> Any:
        try:
            with sigterm_as_interrupt():
                return super().invoke(ctx)
        except RunInterruptedError as exc:
            print_interrupted(str(exc))
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except LstmAdvError as exc:
            print_error(_escape(str(exc)))
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            print_interrupted("interrupted; no new run was written")
            raise typer.Exit(EXIT_INTERRUPTED) from None


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """While the block runs, SIGTERM raises KeyboardInterrupt in the main thread (once; later ones are ignored
    so that the interrupted command can keep what it finished)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    fired = False

    def interrupt(signum: int, frame: FrameType | None) -> None:
        nonlocal fired
        if not fired:
            fired = True
            raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def _escape(text: str) -> str:
    return text.replace("[", "\\[")


@attrs.define
class CliState:
    """Global options shared by every command."""

    home: Path | None = None
    config_file: Path | None = None

    def workspace(self) -> Workspace:
        """The workspace chosen by ``--home`` / ``$LSTM_ADV_HOME``."""
        return Workspace.locate(self.home)

    def config(self, overrides: Mapping[str, Any] | None = None) -> Config:
        """Defaults < ``--config`` file < ``overrides``."""
        return load_config(self.config_file, overrides)

    def database(self, dsn: str | None, config: Config) -> tuple[str, str | None]:
        """``dsn`` as given, or the embedded server's (started if needed) with the source label ``embedded``."""
        if dsn is not None:
            return dsn, None
        from lstm_adv.database.server import ensure_server  # the server module is only needed here

        with console.status("starting the embedded PostgreSQL server"):
            return ensure_server(self.workspace().pg_dir, config.embedded).dsn, "embedded"


def stop_if_interrupted(run: Run, done: str) -> None:
    """Raise :class:`RunInterruptedError` for an interrupted run: ``interrupted after <done>; resume with …``."""
    if run.manifest.status == "interrupted":
        raise RunInterruptedError(f"interrupted after {done}; resume with `lstm-adv {run.kind} --resume {run.id}`")


def counted(n: int, unit: str, plural: str | None = None) -> str:
    """``1 trial``, ``3 trials``."""
    return f"{n} {unit if n == 1 else (plural or unit + 's')}"


def state(ctx: typer.Context) -> CliState:
    """The :class:`CliState` of this invocation (defaults when run without the root callback)."""
    root = ctx.find_root()
    if not isinstance(root.obj, CliState):
        root.obj = CliState()
    return root.obj


def fail(message: str) -> NoReturn:
    """Stop a command with one red line and exit code 1."""
    print_error(_escape(message))
    raise typer.Exit(1)


def setup_logging(verbose: bool) -> None:
    """Library code logs; the CLI shows warnings (or everything with ``--verbose``)."""
    level = logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    # Optuna logs every trial at INFO through its own handler; the CLI shows progress itself.
    logging.getLogger("optuna").setLevel(level)
    # The report renderer's kernel client warns about zmq teardown at exit; it is harmless noise.
    logging.getLogger("traitlets").setLevel(logging.ERROR)


@contextmanager
def trial_progress(total: int) -> Iterator[Callable[[Any, Any], None]]:
    """A progress bar over ``total`` Optuna trials; yields the callback to pass as ``on_trial``."""
    with Progress(
        TextColumn("trials"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,  # a finished transient bar still leaves a blank line in logs
    ) as progress:
        task = progress.add_task("", total=total)

        def on_trial(study: Any, trial: Any) -> None:  # optuna Study, FrozenTrial
            progress.update(task, advance=1, description=f"trial {trial.number} {trial.state.name.lower()}")

        yield on_trial
