"""Placeholder: filled in by the db stage."""

from __future__ import annotations

import typer

app = typer.Typer(help="db")


def _unused() -> None:
    """Not yet available."""
