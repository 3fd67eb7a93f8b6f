"""`lstm-adv demo`: the main job — every stage on the shipped MIMIC-III demo, on the embedded default."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer
from rich.status import Status
from rich.table import Table

from lstm_adv.cli._common import console, quiet_optuna, state

if TYPE_CHECKING:
    from lstm_adv.pipeline import StageOutcome


class _RichListener:
    """Shows a spinner for the running stage and a line for each finished one."""

    def __init__(self) -> None:
        self._status: Status | None = None

    def started(self, stage: str) -> None:
        self._status = console.status(f"[bold]{stage}[/] …")
        self._status.start()

    def step(self, stage: str, message: str) -> None:
        if self._status is not None:
            self._status.update(f"[bold]{stage}[/] {message} …")

    def finished(self, outcome: StageOutcome) -> None:
        if self._status is not None:
            self._status.stop()
        how = "reused" if outcome.reused else f"{outcome.seconds:.1f} s"
        console.print(f"[green]✓[/] [bold]{outcome.stage}[/] ({how})", highlight=False)


def demo(
    ctx: typer.Context,
    fresh: Annotated[
        bool, typer.Option("--fresh", help="Recompute every stage instead of reusing runs whose inputs are unchanged.")
    ] = False,
    synthetic: Annotated[
        int | None,
        typer.Option(
            "--synthetic",
            metavar="N",
            help="Run on N synthetic admissions (generated into schema synthetic_N) instead of the MIMIC-III demo.",
        ),
    ] = None,
) -> None:
    """Run the whole pipeline on the shipped MIMIC-III demo, on the toolkit's own PostgreSQL.

    Starts the embedded server (in the workspace folder, see --home), loads the demo if needed,
    then runs each stage in order and prints the runs it made. Re-running reuses runs whose
    inputs and settings are unchanged; --fresh recomputes everything.
    """
    from lstm_adv.pipeline import run_demo

    quiet_optuna()
    from lstm_adv.reports import report_files

    cli = state(ctx)
    result = run_demo(cli.workspace(), cli.config(), fresh=fresh, synthetic=synthetic, listener=_RichListener())
    table = Table("stage", "run", "time", title="lstm-adv demo")
    table.columns[1].no_wrap = True
    for outcome in result.outcomes:
        table.add_row(
            outcome.stage,
            str(outcome.run_id) if outcome.run_id else "—",
            "reused" if outcome.reused else f"{outcome.seconds:.1f} s",
        )
    console.print(table)
    for outcome in result.outcomes:
        if outcome.detail:
            console.print(f"[bold]{outcome.stage}[/]: {outcome.detail}", highlight=False)
    for report in result.reports:
        html, pdf = report_files(report)
        console.print(f"report: {html}\n        {pdf}", highlight=False, soft_wrap=True)
    console.print("inspect any run with `lstm-adv runs show <id>`; all runs: `lstm-adv runs list`")
    console.print(
        f"the embedded PostgreSQL keeps running (DSN: {result.server_dsn}); stop it with `lstm-adv db stop`",
        highlight=False,
        soft_wrap=True,
    )
