"""Shared CLI plumbing: global options, the error boundary, consoles."""

from __future__ import annotations

import functools
import logging
import os
import re
import signal
import sys
import threading
import tomllib
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

import attrs
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from typer._click import exceptions as click  # typer vendors click: its usage errors are these
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


STORAGE_HELP = (
    "Optuna storage URL, e.g. postgresql://me@host:5432/db, shared by workers on many machines; give the "
    "password through PGPASSWORD or ~/.pgpass, never in the URL [default: a file inside the run]."
)
CELLS_HELP = (
    "The threat: record (alter a sample's measurements and push the altered record through the same fill as "
    "preprocessing: a data-entry error; L0 counts altered measurements), observed (measured model-input cells, "
    "each changed alone: not an input any record produces; a comparison) or all (every cell, Sun et al.) "
    "[default: attack.cells]."
)
SPLIT_HELP = "test, validation (or val), train or all [default: test]."

#: Options of the top-level command; they are accepted after the command too (``train --home x``).
GLOBAL_VALUE_OPTIONS = ("--home", "--config", "--threads")
GLOBAL_FLAGS = ("--verbose", "-v")
_DEFAULT_KEY = re.compile(r"\[default: ([a-z_]+\.[a-z_0-9]+)(?:,[^\]]*)?\]")


def hoist_global_options(args: list[str]) -> list[str]:
    """``args`` with the global options that follow the command moved in front of it (values kept)."""
    command = _command_position(args)
    if command is None:
        return args
    front, rest, moved = args[:command], [], []
    tokens = iter(args[command:])
    for token in tokens:
        if token == "--":
            rest.append(token)
            rest.extend(tokens)
            break
        if token in GLOBAL_VALUE_OPTIONS:
            moved.append(token)
            value = next(tokens, None)
            if value is not None:
                moved.append(value)
        elif token in GLOBAL_FLAGS or token.split("=", 1)[0] in GLOBAL_VALUE_OPTIONS:
            moved.append(token)
        else:
            rest.append(token)
    return [*front, *moved, *rest]


def _command_position(args: list[str]) -> int | None:
    skip = False
    for index, token in enumerate(args):
        if skip:
            skip = False
        elif token in GLOBAL_VALUE_OPTIONS:
            skip = True
        elif not token.startswith("-"):
            return index
    return None


@functools.cache
def shipped_defaults() -> dict[str, Any]:
    """The shipped defaults.toml, as plain data (read without the configuration machinery)."""
    from lstm_adv.resources import resource

    with Path(str(resource("defaults.toml"))).open("rb") as handle:
        return tomllib.load(handle)


def show_default_values(text: str) -> str:
    """Help text with every ``[default: section.key]`` showing the shipped value too."""

    def value(match: re.Match[str]) -> str:
        section, key = match.group(1).split(".", 1)
        shipped = shipped_defaults().get(section, {}).get(key)
        if shipped is None:
            return match.group(0)
        return f"[default: {_shown(shipped) or '(none)'}; {match.group(1)}]"

    return _DEFAULT_KEY.sub(value, text)


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return ", ".join(map(str, value))
    return str(value)


def _with_default_values(command: Any) -> Any:
    """``command`` (and its subcommands) with the shipped default values in every option's help."""
    if getattr(command, "_defaults_shown", False):
        return command
    for param in getattr(command, "params", ()):
        if getattr(param, "help", None):
            param.help = show_default_values(param.help)
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""  # a flag takes no value: no "<bool>" beside it in the help
    make_help_option = getattr(command, "get_help_option", None)
    if make_help_option is not None:

        def help_option(ctx: Any) -> Any:
            option = make_help_option(ctx)  # --help, added when the help is made
            if option is not None:
                option.metavar = ""
            return option

        command.get_help_option = help_option
    command._defaults_shown = True
    return command


#: Exit code of a usage error (a bad option value, an unknown option or command), as Click's.
EXIT_USAGE = 2


class ErrorBoundaryGroup(TyperGroup):
    """The top-level group: a toolkit error becomes one red line and exit code 1, never a traceback.

    Ctrl-C and SIGTERM (what cluster schedulers send) stop a command alike: one line, exit code 130.
    Global options are accepted after the command too, and option help shows shipped default values.
    """

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        parsed: list[str] = super().parse_args(ctx, hoist_global_options(list(args)))
        return parsed

    def main(self, *args: Any, **kwargs: Any) -> Any:
        """Click's entry point, with usage errors (a bad value, an unknown option) as one line and exit code 2."""
        kwargs["standalone_mode"] = False
        try:
            result = super().main(*args, **kwargs)
        except click.NoArgsIsHelpError as exc:  # `lstm-adv` alone: its help, as before
            exc.show()
            sys.exit(exc.exit_code)
        except click.UsageError as exc:
            where = exc.ctx.command_path if exc.ctx is not None else "lstm-adv"
            print_error(_escape(f"{exc.format_message()} (see `{where} --help`)"))
            sys.exit(EXIT_USAGE)
        except click.ClickException as exc:
            print_error(_escape(exc.format_message()))
            sys.exit(exc.exit_code)
        except typer.Abort:
            print_interrupted("interrupted; no new run was written")
            sys.exit(EXIT_INTERRUPTED)
        if isinstance(result, int) and result:
            sys.exit(result)
        return result

    def format_help(self, ctx: Any, formatter: Any) -> None:
        _with_default_values(self)
        super().format_help(ctx, formatter)

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        command = super().get_command(ctx, cmd_name)
        if command is not None:
            _with_default_values(command)
            for sub in getattr(command, "commands", {}).values():
                _with_default_values(sub)
        return command

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
    threads: int | None = None

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


def stop_if_interrupted(run: Run, done: str, *, left: str = "") -> None:
    """Raise :class:`RunInterruptedError` for an interrupted run: ``interrupted after <done>; resume with …``
    (``left``: what the resume will run, e.g. ``the 47 trials left of 50``)."""
    if run.manifest.status == "interrupted":
        then = f" ({left})" if left else ""
        raise RunInterruptedError(
            f"interrupted after {done}; resume with `lstm-adv {run.kind} --resume {run.id}`{then}"
        )


def weak_warning(summary: Any, out: Console) -> None:
    """One warning line when a model (its :class:`ModelSummary`) has not learned, with the reason."""
    reason = getattr(summary, "weak", None)
    if reason:
        out.print(
            f"[yellow]warning: this model has not learned: {reason}; attack and robustness numbers on it describe "
            "a model no better than chance, not a finding[/yellow]",
            highlight=False,
        )


def model_weak_warning(store: Any, model_run: Any, out: Console) -> None:
    """:func:`weak_warning` for the model run ``model_run`` (an id) of an attack or a tuning run."""
    from lstm_adv.results.summaries import ModelSummary

    try:
        run = store.get(str(model_run))
    except LstmAdvError:
        return
    if run.kind == "model" and isinstance(run.manifest.summary, ModelSummary):
        weak_warning(run.manifest.summary, out)


def check_at_least(option: str, value: int | None, low: int = 1) -> None:
    """An option's count, checked before the command loads torch, pandas or optuna: one line when below ``low``."""
    if value is not None and value < low:
        fail(f"{option} must be >= {low}; got {value}")


def check_split(value: str | None, choices: tuple[str, ...] = ("train", "validation", "val", "test", "all")) -> None:
    """A ``--split`` value, checked before any heavy import: one line naming the choices."""
    if value is not None and value not in choices:
        named = ", ".join("validation (or val)" if c == "validation" else c for c in choices if c != "val")
        fail(f"unknown split {value!r}; choose one of {named}")


def trials_left(finished: int, budget: int | None) -> str:
    """What resuming a study runs: ``runs the 47 trials left of 50`` (empty without a recorded budget)."""
    if budget is None:
        return ""
    return f"runs the {counted(max(budget - finished, 0), 'trial')} left of {budget}"


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


def quiet_optuna() -> None:
    """Optuna's per-trial INFO lines only with ``--verbose``: importing optuna resets its logger to INFO, so every
    command that tunes calls this after the import (the console shows one progress line per study instead)."""
    import optuna

    verbose = logging.getLogger().level <= logging.INFO
    optuna.logging.set_verbosity(logging.INFO if verbose else logging.WARNING)


def setup_logging(verbose: bool) -> None:
    """Library code logs; the CLI shows warnings (or everything with ``--verbose``)."""
    level = logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    # Optuna logs every trial at INFO through its own handler; the CLI shows progress itself.
    logging.getLogger("optuna").setLevel(level)
    # The report renderer's kernel client warns about zmq teardown at exit; it is harmless noise.
    logging.getLogger("traitlets").setLevel(logging.ERROR)


@contextmanager
def step_progress(what: str, total: int | None) -> Iterator[Callable[..., None]]:
    """A transient progress bar named ``what`` over ``total`` steps (None: unknown); yields
    ``advance(description="", steps=1)``. Off when the output is not a terminal (a finished bar leaves a
    blank line in logs)."""
    with Progress(
        TextColumn(what),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    ) as progress:
        task = progress.add_task("", total=total)

        def advance(description: str = "", steps: int = 1) -> None:
            progress.update(task, advance=steps, description=description)

        yield advance


@contextmanager
def trial_progress(total: int) -> Iterator[Callable[[Any, Any], None]]:
    """A progress bar over ``total`` Optuna trials; yields the callback to pass as ``on_trial``."""
    with step_progress("trials", total) as advance:
        yield lambda study, trial: advance(f"trial {trial.number} {trial.state.name.lower()}")  # Study, FrozenTrial


def physical_cores() -> int:
    """The machine's physical CPU cores available to this process (logical CPUs where that is unknown)."""
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    cores: set[tuple[str, str]] = set()
    try:
        physical = core = ""
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "physical id":
                physical = value.strip()
            elif key.strip() == "core id":
                core = value.strip()
                cores.add((physical, core))
    except OSError:
        pass
    return max(1, min(available, len(cores))) if cores else max(1, available)


def apply_threads(threads: int | None) -> int:
    """Set torch's CPU threads: ``threads`` when given, else the physical cores unless the environment
    (``OMP_NUM_THREADS``) already chose. torch reads the environment when it is imported; a torch already
    imported is set directly. Returns the number in effect."""
    if threads is not None and threads < 1:
        raise typer.BadParameter(f"--threads must be >= 1; got {threads}")
    if threads is None and os.environ.get("OMP_NUM_THREADS"):
        return int(os.environ["OMP_NUM_THREADS"])
    count = threads or physical_cores()
    os.environ["OMP_NUM_THREADS"] = str(count)
    if "torch" in sys.modules and threads is not None:
        sys.modules["torch"].set_num_threads(count)
    return count


def dashboard_hint(run: Run, storage: str) -> str:
    """Where a tuning run's study lives and the command that opens it in optuna-dashboard."""
    from lstm_adv.results.artifacts import STUDY_FILE

    target = str(run.path / STUDY_FILE) if storage == "file" else storage
    return f"study: {target}\nopen it with `optuna-dashboard {target}` (pip install optuna-dashboard)"
