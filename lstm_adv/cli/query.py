"""`lstm-adv query`: run the cohort SQL against MIMIC-III and store the results as a query run."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from lstm_adv.cli._common import console, state
from lstm_adv.cli.summaries import register
from lstm_adv.results.store import Run
from lstm_adv.results.summaries import QuerySummary


def query(
    ctx: typer.Context,
    dsn: Annotated[
        str | None,
        typer.Option(
            help=(
                "PostgreSQL URL of a MIMIC-III database, e.g. postgresql://me@host:5432/mimic. Give the password "
                "through PGPASSWORD or ~/.pgpass, never in the URL. [default: the embedded server with the demo]"
            ),
        ),
    ] = None,
    schema: Annotated[
        str | None, typer.Option(help="Schema holding the MIMIC-III tables. [default: database.schema, mimiciii]")
    ] = None,
    features: Annotated[
        str | None,
        typer.Option(
            "--features",
            help=(
                "Feature definitions: a TOML file in the format of lstm_adv/resources/features.toml, or a shipped "
                "one by name (features_serum.toml: potassium and glucose from serum and blood gas). Stored in the "
                "run. [default: cohort.features_file, i.e. the shipped features.toml]"
            ),
        ),
    ] = None,
) -> None:
    """Select the cohort and its 19 input series with the SQL in `sql/`, and store them as a query run.

    Writes stays, admissions, vitals, labs and bloodgas as Parquet; the run id is printed at the end.
    Pass the id (or nothing, for the latest) to `lstm-adv preprocess`. Needs only CONNECT, USAGE and
    SELECT on the MIMIC-III tables: nothing is written to the database.
    """
    from lstm_adv.query import run_cohort_query

    cli = state(ctx)
    config = cli.config({"database.schema": schema, "cohort.features_file": features})
    dsn, source = cli.database(dsn, config)
    with console.status("querying") as status:
        run = run_cohort_query(
            dsn,
            schema=config.database.schema,
            config=config,
            store=cli.workspace().store,
            source=source,
            progress=lambda step: status.update(f"query: {step}"),
        )
    render_query_summary(run, console)
    console.print(f"query run [bold]{run.id}[/]")


@register("query")
def render_query_summary(run: Run, out: Console) -> None:
    """Print the cohort flow (rows left after each rule) and the row count of each stored table."""
    s = run.summary_as(QuerySummary)
    out.print(f"source  {s.source}, schema {s.schema}", highlight=False)
    if s.window_start is not None:
        out.print(f"window  starts at {s.window_start}", highlight=False)
    if s.features is not None:
        out.print(f"features  {s.features.name} (sha256 {s.features.sha256[:12]})", highlight=False)
    flow = Table("cohort step", "count")
    for step in s.flow:
        flow.add_row(step.step, f"{step.count:,}")
    out.print(flow)
    tables = Table("table", "rows")
    for name, rows in s.tables.items():
        tables.add_row(f"{name}.parquet", f"{rows:,}")
    out.print(tables)
