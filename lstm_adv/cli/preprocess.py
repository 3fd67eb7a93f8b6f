"""`lstm-adv preprocess`: turn a query run into a FeatureMatrix (features) run."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from lstm_adv.cli._common import console, state
from lstm_adv.cli.summaries import register
from lstm_adv.preprocess import run_preprocess
from lstm_adv.results.store import Run
from lstm_adv.results.summaries import FeaturesSummary


def preprocess(
    ctx: typer.Context,
    data: Annotated[
        str | None, typer.Option("--data", help="The query run to preprocess (id or unique prefix) [default: latest].")
    ] = None,
    seed: Annotated[
        int | None, typer.Option(help="Seed of the patient split and folds [default: preprocess.seed].")
    ] = None,
    folds: Annotated[
        int | None, typer.Option("--folds", help="Cross-validation folds over train+validation [default: 5].")
    ] = None,
) -> None:
    """Bin, filter, split, fill and scale a query run's measurements into a (N, 48, 19) FeatureMatrix.

    Prints the new features run id; `lstm-adv runs show <id>` shows its shape, class balance and missingness.
    """
    cli = state(ctx)
    config = cli.config({"preprocess.seed": seed, "preprocess.n_folds": folds})
    with console.status("preprocessing…"):
        run = run_preprocess(cli.workspace().store, data, config)
    console.print(str(run.id))


@register("features")
def render_features(run: Run, out: Console) -> None:
    """Shape, class balance per split, the filter counts and missingness per feature."""
    s = run.summary_as(FeaturesSummary)
    out.print(f"shape   {s.shape}   folds {s.n_folds}")
    out.print(f"window rule: {s.window_rule}")
    flow = Table("step", "count", title="counts")
    for row in s.flow:
        flow.add_row(row.step, str(row.count))
    out.print(flow)
    splits = Table("split", "samples", "positives", "prevalence", "patients", title="class balance")
    for name, counts in s.splits.items():
        share = counts.positives / counts.samples if counts.samples else 0.0
        splits.add_row(name, str(counts.samples), str(counts.positives), f"{share:.1%}", str(counts.subjects))
    out.print(splits)
    missing = Table("feature", "hours without a measurement", title="missingness in the window")
    for name, share in s.missingness.items():
        missing.add_row(name, f"{share:.1%}")
    out.print(missing)
