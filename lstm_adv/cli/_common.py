"""Shared CLI plumbing: global options, the error boundary, consoles."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import attrs
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from typer.core import TyperGroup

from lstm_adv.config import Config
from lstm_adv.domain.errors import LstmAdvError
from lstm_adv.results.config_file import load_config
from lstm_adv.results.workspace import Workspace

console = Console()
err_console = Console(stderr=True)


def print_error(message: str) -> None:
    """One red line on stderr."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, markup=True, soft_wrap=True)


class ErrorBoundaryGroup(TyperGroup):
    """The top-level group: a toolkit error becomes one red line and exit code 1, never a traceback."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except LstmAdvError as exc:
            print_error(_escape(str(exc)))
            raise typer.Exit(1) from None


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
    ) as progress:
        task = progress.add_task("", total=total)

        def on_trial(study: Any, trial: Any) -> None:  # optuna Study, FrozenTrial
            progress.update(task, advance=1, description=f"trial {trial.number} {trial.state.name.lower()}")

        yield on_trial
