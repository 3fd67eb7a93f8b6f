"""`lstm-adv analyze`: statistics, tables and figures of an attack run, and how `runs show` prints them."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from lstm_adv.cli._common import console, state
from lstm_adv.cli.summaries import register
from lstm_adv.config import THREATS
from lstm_adv.results.store import Run
from lstm_adv.results.summaries import AnalysisSummary

# pandas and matplotlib are imported inside the command so that `lstm-adv --help` stays fast
_DIRECTIONS = {"0to1": "0→1", "1to0": "1→0"}


def analyze(
    ctx: typer.Context,
    attack: Annotated[
        str | None, typer.Option("--attack", help="The attack run to analyse (id or unique prefix) [default: latest].")
    ] = None,
    top: Annotated[
        int | None,
        typer.Option("--top", help="How many top features and hours the summary names [default: analysis.top_k]."),
    ] = None,
) -> None:
    """Per-example norms, per-cell GMP/GPP/GANZP/GAP, feature and hour susceptibility, clinical-unit sizes.

    Splits the successful examples by direction (0→1, 1→0) and into first, best and sparse examples;
    writes Parquet tables and PNG + SVG figures into a new analysis run, prints its summary (the
    rankings are of the sparse examples) and its id.
    """
    from lstm_adv.analysis import run_analysis

    cli = state(ctx)
    config = cli.config({"analysis.top_k": top})
    with console.status("analysing…"):
        run = run_analysis(cli.workspace().store, attack, config)
    render_analysis(run, console)
    console.print(f"analysis run {run.id}")


def _number(value: Any, fmt: str) -> str:
    return "—" if value is None else format(value, fmt)


@register("analysis")
def render_analysis(run: Run, out: Console) -> None:
    """The rule, counts and success per direction, sizes of first, best and sparse examples, the measured
    share of changed cells, top features and hours of the sparse examples."""
    s = run.summary_as(AnalysisSummary)
    out.print(f"attack run {s.attack_run}   features run {s.features_run}")
    rule = "argmax (t = 0.5)" if s.decision == "argmax" else f"threshold t = {s.threshold:.3f}"
    out.print(f"decision rule: {rule}; threat {s.cells}: {THREATS.get(s.cells, s.cells)}", highlight=False)
    rate = s.success.text(".3f") if s.success is not None else _number(s.success_rate, ".1%")
    out.print(
        f"{s.n_successful} successful of {s.n_attacked} attacked (success rate {rate}); {s.n_samples} samples",
        highlight=False,
    )
    unit = "altered measurements" if s.unit == "measurement" else "changed cells"
    if s.median_l0_sparse is not None:
        out.print(f"sparse examples: median {unit} {s.median_l0_sparse.text('.1f')} (95 % bootstrap)", highlight=False)
    if s.leverage is not None:
        out.print(f"leverage: a median of {s.leverage:.1f} model-input cells moved per altered measurement")
    table = Table("direction", "attacked", "successful", "success rate", title="flips by direction")
    for code, name in _DIRECTIONS.items():
        row = s.directions.get(code)
        table.add_row(
            name,
            str(row.attacked if row else 0),
            str(row.successful if row else 0),
            _number(row.success_rate if row else None, ".1%"),
        )
    out.print(table)
    sizes = Table(
        "examples",
        f"median L0 ({unit})",
        "mean L0",
        "mean L1",
        "measured",
        title="size of the successful examples (best: smallest L1 iterate; sparse: best pruned to a minimal support)",
    )
    for which in ("first", "best", "sparse"):
        sizes.add_row(
            which,
            _number(s.median_l0.get(which, {}).get("all"), ".1f"),
            _number(s.mean_l0.get(which, {}).get("all"), ".1f"),
            _number(s.mean_l1.get(which, {}).get("all"), ".3f"),
            _number(s.measured_fraction.get(which, {}).get("all"), ".1%"),
        )
    out.print(sizes)
    out.print("measured: share of the moved model-input cells that held a real measurement (not an imputed value)")
    columns = ["direction", "most susceptible features (S_j)", "hours"]
    if s.top_per_opportunity:
        columns.append("per-opportunity rate")
    tops = Table(*columns, title=f"rankings of the sparse examples (threat: {s.cells})")
    for code, name in _DIRECTIONS.items():
        features = s.top_features.get("sparse", {}).get(code, ())
        hours = s.top_hours.get("sparse", {}).get(code, ())
        ranked = [name, ", ".join(map(str, features)) or "—", ", ".join(map(str, hours)) or "—"]
        if s.top_per_opportunity:
            ranked.append(", ".join(s.top_per_opportunity.get(code, ())) or "—")
        tops.add_row(*ranked)
    out.print(tops)
    out.print(f"{len(s.figures)} figure files under {run.path / 'figures'}")
