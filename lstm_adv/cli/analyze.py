"""`lstm-adv analyze`: statistics, tables and figures of an attack run, and how `runs show` prints them."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from lstm_adv.cli._common import console, state
from lstm_adv.cli.summaries import register
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

    Splits the successful examples by direction (0→1, 1→0) and into first and best examples; writes
    Parquet tables and PNG + SVG figures into a new analysis run and prints its id.
    `lstm-adv runs show <id>` prints the counts and the most susceptible features and hours.
    """
    from lstm_adv.analysis import run_analysis

    cli = state(ctx)
    config = cli.config({"analysis.top_k": top})
    with console.status("analysing…"):
        run = run_analysis(cli.workspace().store, attack, config)
    console.print(str(run.id))


def _number(value: Any, fmt: str) -> str:
    return "—" if value is None else format(value, fmt)


@register("analysis")
def render_analysis(run: Run, out: Console) -> None:
    """Counts and success rate per direction, mean L0/L1 of first and best examples, top features and hours."""
    s = run.summary_as(AnalysisSummary)
    out.print(f"attack run {s.attack_run}   features run {s.features_run}")
    out.print(
        f"{s.n_successful} successful of {s.n_attacked} attacked ({_number(s.success_rate, '.1%')}); "
        f"{s.n_samples} samples"
    )
    table = Table(
        "direction",
        "attacked",
        "successful",
        "success rate",
        "mean L0 first / best",
        "mean L1 first / best",
        title="successful examples",
    )
    for code, name in _DIRECTIONS.items():
        row = s.directions.get(code)
        l0 = [s.mean_l0.get(w, {}).get(code) for w in ("first", "best")]
        l1 = [s.mean_l1.get(w, {}).get(code) for w in ("first", "best")]
        table.add_row(
            name,
            str(row.attacked if row else 0),
            str(row.successful if row else 0),
            _number(row.success_rate if row else None, ".1%"),
            " / ".join(_number(v, ".1f") for v in l0),
            " / ".join(_number(v, ".3f") for v in l1),
        )
    out.print(table)
    tops = Table("examples", "direction", "most susceptible features", "hours", title="rankings (S_j, Sun et al.)")
    for which in ("first", "best"):
        for code, name in _DIRECTIONS.items():
            features = s.top_features.get(which, {}).get(code, ())
            hours = s.top_hours.get(which, {}).get(code, ())
            tops.add_row(which, name, ", ".join(map(str, features)) or "—", ", ".join(map(str, hours)) or "—")
    out.print(tops)
    out.print(f"{len(s.figures)} figure files under {run.path / 'figures'}")
