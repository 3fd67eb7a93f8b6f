"""`lstm-adv preprocess`: turn a query run into a FeatureMatrix (features) run."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from lstm_adv.cli._common import console, state
from lstm_adv.cli.summaries import register
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
    features: Annotated[
        str | None,
        typer.Option(
            "--features",
            help=(
                "Feature definitions file to check the query run against (it must be the one the query used). "
                "Only needed for query runs made before the definitions were stored in the run. "
                "[default: the query run's own definitions]"
            ),
        ),
    ] = None,
    drop_unmeasured_vitals: Annotated[
        bool | None,
        typer.Option(
            "--drop-unmeasured-vitals/--keep-unmeasured-vitals",
            help=(
                "Drop samples with no vital sign measured in the window or its look-back (their vitals would be the "
                "training median throughout). [default: preprocess.drop_unmeasured_vitals, i.e. keep]"
            ),
        ),
    ] = None,
) -> None:
    """Bin, filter, split, fill and scale a query run's measurements into a (N, 48, 19) FeatureMatrix.

    Prints the new features run id; `lstm-adv runs show <id>` shows its shape, class balance, missingness and
    how much of each feature was measured rather than filled.
    """
    from lstm_adv.preprocess import run_preprocess

    cli = state(ctx)
    config = cli.config(
        {
            "preprocess.seed": seed,
            "preprocess.n_folds": folds,
            "preprocess.drop_unmeasured_vitals": drop_unmeasured_vitals,
            "cohort.features_file": features,
        }
    )
    with console.status("preprocessing…"):
        run = run_preprocess(cli.workspace().store, data, config)
    render_features(run, console)
    console.print(f"features run {run.id}")


@register("features")
def render_features(run: Run, out: Console) -> None:
    """Shape, class balance per split, the filter counts, and per feature the measured share and unmeasured samples."""
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
    if s.coverage is None:  # a run made before coverage was recorded
        missing = Table("feature", "hours without a measurement", title="missingness in the window")
        for name, share in s.missingness.items():
            missing.add_row(name, f"{share:.1%}")
        out.print(missing)
        return
    coverage = Table(
        "feature", "cells measured", "samples never measured", title=f"measured vs filled ({s.shape[0]} samples)"
    )
    # the manifest stores mappings sorted by key; the definitions give the model order
    names = s.features.to_spec().names if s.features is not None else tuple(s.coverage)
    for name in names:
        c = s.coverage[name]
        coverage.add_row(name, f"{c.measured_fraction:.1%}", str(c.unmeasured_samples))
    out.print(coverage)
    out.print(
        "cells measured: hours of the window holding a measurement; never measured: no measurement in the window "
        "or its look-back, so all 48 hours are the training median",
        highlight=False,
    )
    out.print(f"samples with no vital sign measured: {s.samples_without_vitals}", highlight=False)
    if s.features is not None:
        out.print(f"features  {s.features.name} (sha256 {s.features.sha256[:12]})", highlight=False)
