"""Placeholder: filled in by the demo stage."""

from __future__ import annotations

import typer

app = typer.Typer(help="demo")


def demo() -> None:
    """Not yet available."""
