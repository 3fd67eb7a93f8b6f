"""`lstm-adv runs …`: list runs and show one with its lineage."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table
from rich.tree import Tree

from lstm_adv.cli._common import console, state
from lstm_adv.cli.summaries import render_summary
from lstm_adv.domain.errors import LstmAdvError
from lstm_adv.domain.run_id import KINDS
from lstm_adv.results.describe import headline
from lstm_adv.results.store import Run, RunStore

app = typer.Typer(
    help="Inspect stored runs: every stage writes one, with a manifest and its parents.", no_args_is_help=True
)


@app.command("list")
def list_runs(
    ctx: typer.Context,
    kind: Annotated[str | None, typer.Option(help=f"Only runs of this kind ({', '.join(KINDS)}).")] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print a JSON list (each run's manifest and its headline) instead.")
    ] = False,
) -> None:
    """List finished runs, oldest first, with one headline figure each (and say when killed commands left
    temporary runs behind)."""
    store = state(ctx).workspace().store
    runs = store.list(kind)
    if as_json:
        listed = [{"headline": headline(run), "manifest": run.manifest.to_data()} for run in runs]
        typer.echo(json.dumps(listed, indent=2))
        return
    if not runs:
        console.print("no runs yet — start with `lstm-adv demo` or `lstm-adv query`")
    else:
        console.print(_table(runs))
    stale = store.stale()
    if stale:
        console.print(
            f"{len(stale)} stale temporary run(s) under {store.root / '.tmp'}, left by killed commands: "
            f"{', '.join(p.name for p in stale)}; remove them with `lstm-adv runs clean`",
            highlight=False,
            soft_wrap=True,
        )


@app.command("clean")
def clean_runs(ctx: typer.Context) -> None:
    """Remove the temporary runs that killed commands left behind (never a run that is being written)."""
    store = state(ctx).workspace().store
    removed = store.clean()
    left = store.stale()
    if removed:
        console.print(f"removed {len(removed)} stale temporary run(s): {', '.join(removed)}", highlight=False)
    if left:
        console.print(
            f"could not remove {len(left)} stale temporary run(s): {', '.join(str(p) for p in left)} "
            "(their files are not yours to delete: ask their owner, or remove them as that user)",
            highlight=False,
            soft_wrap=True,
        )
    elif not removed:
        console.print("no stale temporary runs")


#: Below this width ``runs list`` leaves out the kind and creation time (both are in the id) and puts the
#: parents under the headline, so that ids stay whole and rows fit a terminal of 80 columns.
WIDE = 120


def _table(runs: list[Run]) -> Table:
    if console.width < WIDE:
        return _narrow_table(runs)
    table = Table("id", "kind", "created (UTC)", "status", "headline", "parents")
    table.columns[0].no_wrap = True
    table.columns[5].overflow = "fold"  # ids are never cut to an ambiguous prefix
    for run in runs:
        parents = ", ".join(str(p) for p in run.manifest.parents) or "—"
        created = f"{run.manifest.created:%Y-%m-%d %H:%M:%S}"
        table.add_row(str(run.id), run.kind, created, run.manifest.status, headline(run), parents)
    return table


def _narrow_table(runs: list[Run]) -> Table:
    """The compact listing: id (never cut), status, and the headline with the parents beneath it."""
    table = Table("id", "status", "headline ← parents", box=None, pad_edge=False)
    table.columns[0].no_wrap = True
    table.columns[2].overflow = "fold"
    for run in runs:
        parents = ", ".join(str(p) for p in run.manifest.parents)
        text = headline(run) + (f"\n← {parents}" if parents else "")
        table.add_row(str(run.id), run.manifest.status, text)
    return table


@app.command("show")
def show_run(
    ctx: typer.Context,
    run_id: Annotated[str, typer.Argument(help="A run id or a unique prefix of one.")],
    show_config: Annotated[
        bool, typer.Option("--show-config", help="Also print the run's full effective configuration.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the run's manifest as JSON instead.")] = False,
) -> None:
    """Show one run: manifest, lineage and what it holds."""
    store = state(ctx).workspace().store
    run = store.get(run_id)
    manifest = run.manifest
    if as_json:
        typer.echo(json.dumps(manifest.to_data(), indent=2))
        return
    console.print(f"[bold]{run.id}[/]  kind={run.kind}  status={manifest.status}")
    console.print(
        f"created {manifest.created:%Y-%m-%d %H:%M:%S} UTC, lstm-adv {manifest.package_version}, "
        f"git {manifest.git_commit[:10] if manifest.git_commit else '—'}"
    )
    console.print(f"folder  {run.path}")
    tree = Tree(f"lineage: {run.id}")
    _add_parents(tree, run, store)
    console.print(tree)
    damaged = run.verify()
    integrity = "checksums ok" if not damaged else "CHANGED: " + ", ".join(damaged)
    unlisted = run.unlisted()
    if unlisted:
        integrity += f"; NOT IN THE MANIFEST (added after the run was written): {', '.join(unlisted)}"
    console.print(f"files   {len(manifest.checksums)} ({integrity})", highlight=False, soft_wrap=True)
    render_summary(run, console)
    if show_config:
        console.print_json(json.dumps(manifest.config))


def _add_parents(tree: Tree, run: Run, store: RunStore) -> None:
    for parent_id in run.manifest.parents:
        try:
            parent = store.get(str(parent_id))
        except LstmAdvError:  # a deleted ancestor is shown, not fatal
            tree.add(f"{parent_id} (missing)")
            continue
        _add_parents(tree.add(f"{parent.id} ({parent.kind})"), parent, store)
