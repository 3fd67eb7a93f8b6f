"""`lstm-adv report`: render the report of a run to self-contained HTML and a PDF."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from lstm_adv.cli._common import console, state
from lstm_adv.cli.summaries import register
from lstm_adv.reports import DOCUMENTS, ENGINES, PIPELINE, render_report, report_files
from lstm_adv.results.store import Run
from lstm_adv.results.summaries import ReportSummary


def report(
    ctx: typer.Context,
    run_id: Annotated[
        str,
        typer.Argument(
            help=f"The run to report (id or unique prefix); its kind ({', '.join(sorted(DOCUMENTS))}) "
            "picks the document."
        ),
    ],
    engine: Annotated[
        str,
        typer.Option(help=f"{' | '.join(ENGINES)}: auto uses Quarto when `quarto` is on PATH, else the offline path."),
    ] = "auto",
    reports: Annotated[
        Path | None,
        typer.Option(
            "--reports", help="Folder of the .qmd documents [default: $LSTM_ADV_REPORTS or the project's reports/]."
        ),
    ] = None,
    pipeline: Annotated[
        bool,
        typer.Option("--pipeline", help="Render the whole-pipeline report of the lineage that ends in this run."),
    ] = False,
) -> None:
    """Render the report of a run (data, model, attack, robustness, or --pipeline) to self-contained HTML and PDF.

    The document only reads the run's stored aggregates; it shows no patient-level rows or ids.
    Prints the HTML and PDF paths; `lstm-adv runs show <report id>` shows what was rendered.
    """
    # jupyter_client warns through traitlets when it tears down its zmq context at exit; harmless noise
    logging.getLogger("traitlets").setLevel(logging.ERROR)
    cli = state(ctx)
    workspace = cli.workspace()
    run = workspace.store.get_complete(run_id)
    with console.status(f"rendering the report of {run.id}…"):
        result = render_report(
            run,
            store=workspace.store,
            home=workspace.home,
            reports_dir=reports,
            engine=engine,
            document=PIPELINE if pipeline else None,
        )
    html, pdf = report_files(result)
    console.print(f"report run [bold]{result.id}[/]")
    console.print(str(html), highlight=False, soft_wrap=True)
    console.print(str(pdf), highlight=False, soft_wrap=True)


@register("report")
def render_report_summary(run: Run, out: Console) -> None:
    """The reported run, the document, the engine and the rendered files."""
    s = run.summary_as(ReportSummary)
    out.print(f"document {s.document}.qmd   engine {s.engine}   of {s.reported}")
    for name in s.files:
        out.print(str(run.path / name), highlight=False, soft_wrap=True)
