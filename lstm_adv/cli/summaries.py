"""How `runs show` prints the summary of each run kind. Each stage registers its renderer here."""

from __future__ import annotations

from collections.abc import Callable

import attrs
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
    if run.manifest.summary is None:
        console.print("no summary recorded")
        return
    renderer = _RENDERERS.get(run.kind)
    if renderer is not None:
        renderer(run, console)
        return
    if run.manifest.summary is not None:  # a kind without a renderer of its own
        table = Table("summary", "value")
        for field in attrs.fields(type(run.manifest.summary)):
            table.add_row(field.name, str(getattr(run.manifest.summary, field.name)))
        console.print(table)
