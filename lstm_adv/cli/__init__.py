"""The `lstm-adv` command line: one sub-module per command group, thin over the library."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lstm_adv import __version__
from lstm_adv.cli import analyze, attack, db, defend, demo, preprocess, query, report, runs, synth, train
from lstm_adv.cli._common import CliState, ErrorBoundaryGroup, apply_threads, setup_logging

app = typer.Typer(
    cls=ErrorBoundaryGroup,
    name="lstm-adv",
    help=(
        "Adversarial robustness of clinical time-series models.\n\n"
        "Pipeline: db → query → preprocess → tune-model → train → tune-attack → attack → analyze → report. "
        "Every stage writes a run (see `lstm-adv runs list`); `lstm-adv demo` runs the stages on the "
        "shipped MIMIC-III demo."
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode="markdown",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"lstm-adv {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    home: Annotated[
        Path | None,
        typer.Option(help="Folder for runs and the embedded database [default: $LSTM_ADV_HOME or ./.lstm-adv]."),
    ] = None,
    config: Annotated[
        Path | None, typer.Option("--config", help="A TOML file overriding any of the shipped defaults.")
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log progress details.")] = False,
    threads: Annotated[
        int | None,
        typer.Option(
            "--threads",
            help="CPU threads for torch [default: the machine's physical cores, or $OMP_NUM_THREADS]. On a busy "
            "machine fewer threads than cores can be much faster.",
        ),
    ] = None,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Global options, valid before or after the command."""
    setup_logging(verbose)
    ctx.obj = CliState(home=home, config_file=config, threads=apply_threads(threads))
    if config is not None:
        ctx.obj.config()  # a bad --config fails every command, also those that read no setting


# Registration order is the order `lstm-adv --help` lists the commands: the pipeline's order.
app.command("demo")(demo.demo)
app.add_typer(db.app, name="db")
app.command("synth")(synth.synth)
app.command("query")(query.query)
app.command("preprocess")(preprocess.preprocess)
app.command("tune-model")(train.tune_model)
app.command("train")(train.train)
app.command("tune-attack")(attack.tune_attack)
app.command("attack")(attack.attack)
app.command("analyze")(analyze.analyze)
app.command("report")(report.report)
app.command("defend")(defend.defend)
app.command("robustness")(defend.robustness)
app.add_typer(runs.app, name="runs")


def main() -> None:
    """Console-script entry point."""
    app()
