"""How `runs show` prints the summary of each run kind. Each stage registers its renderer here."""

from __future__ import annotations

from collections.abc import Callable

from rich.console import Console
from rich.table import Table

from lstm_adv.results.store import Run

Renderer = Callable[[Run, Console], None]
_RENDERERS: dict[str, Renderer] = {}


def register(kind: str) -> Callable[[Renderer], Renderer]:
    """Decorator: ``fn`` renders the summary of runs of ``kind``."""

    def decorate(fn: Renderer) -> Renderer:
        _RENDERERS[kind] = fn
        return fn

    return decorate


def render_summary(run: Run, console: Console) -> None:
    """Print the run's summary with its kind's renderer, or as a generic key/value table."""
    renderer = _RENDERERS.get(run.kind)
    if renderer is not None:
        renderer(run, console)
        return
    if run.manifest.summary:
        table = Table("summary", "value")
        for key, value in run.manifest.summary.items():
            table.add_row(key, str(value))
        console.print(table)
