"""`lstm-adv synth`: a synthetic MIMIC-III cohort of any size, loaded into PostgreSQL."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from lstm_adv.cli._common import console, state
from lstm_adv.cli.summaries import register
from lstm_adv.results.store import Run
from lstm_adv.results.summaries import SynthSummary


def synth(
    ctx: typer.Context,
    admissions: Annotated[
        int | None,
        typer.Option(help="Hospital admissions to generate, 1 to 100000 (full MIMIC-III: ~42000). [default: 1000]"),
    ] = None,
    seed: Annotated[
        int | None, typer.Option(help="Random seed; the same seed and settings give identical tables. [default: 0]")
    ] = None,
    dsn: Annotated[
        str | None,
        typer.Option(
            help=(
                "PostgreSQL URL to write to, e.g. postgresql://me@host:5432/scratch. Give the password through "
                "PGPASSWORD or ~/.pgpass, never in the URL. [default: the embedded server]"
            ),
        ),
    ] = None,
    schema: Annotated[
        str | None,
        typer.Option(
            help=(
                "Schema for the tables; replaced if an earlier `lstm-adv synth` wrote it, refused if it holds "
                "other tables. [default: synthetic]"
            )
        ),
    ] = None,
) -> None:
    """Generate a synthetic MIMIC-III cohort and load it into PostgreSQL, ready for `lstm-adv query`.

    Writes patients, admissions, icustays, chartevents, labevents, d_items and d_labitems with the
    real itemids, where a hidden severity drives both the physiology and in-hospital death (~10 %).
    Each admission's true death probability goes to the synth run (truth.parquet) and to table
    `<schema>.synth_truth`, so the best achievable AUROC (oracle AUROC) of any split is known.
    """
    from lstm_adv.synth import check_request, run_synth
    from lstm_adv.synth.service import check_schema_name

    cli = state(ctx)
    config = cli.config({"synth.admissions": admissions, "synth.seed": seed, "synth.schema": schema})
    check_request(config.synth.admissions, config.synth.seed)  # before starting a server
    check_schema_name(config.synth.schema)
    dsn, source = cli.database(dsn, config)
    with console.status("synth") as status:
        run = run_synth(
            dsn,
            config=config,
            store=cli.workspace().store,
            source=source,
            progress=lambda step: status.update(f"synth: {step}"),
        )
    render_synth_summary(run, console)
    console.print(f"synth run [bold]{run.id}[/]")
    console.print(f"next: lstm-adv query --schema {config.synth.schema}", highlight=False)


@register("synth")
def render_synth_summary(run: Run, out: Console) -> None:
    """Print size, outcome prevalence, oracle AUROC, rows per table and timings of a synth run."""
    s = run.summary_as(SynthSummary)
    out.print(f"source {s.source}, schema {s.schema}, seed {s.seed}", highlight=False)
    oracle = "n/a" if s.oracle_auroc_all is None else f"{s.oracle_auroc_all:.3f}"
    out.print(
        f"{s.admissions:,} admissions, {s.deaths:,} deaths ({100 * s.prevalence:.1f} %), oracle AUROC "
        f"(all admissions) {oracle}",
        highlight=False,
    )
    tables = Table("table", "rows")
    for name, rows in s.tables.items():
        tables.add_row(name, f"{rows:,}")
    out.print(tables)
    out.print(f"generated in {s.seconds.generate:.1f} s, loaded in {s.seconds.load:.1f} s", highlight=False)
