"""Placeholder: filled in by the query stage."""

from __future__ import annotations

import typer

app = typer.Typer(help="query")


def query() -> None:
    """Not yet available."""
