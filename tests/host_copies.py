"""Counting device→host copies on a CPU: every ``Tensor`` method that hands a value to Python is wrapped.

On CUDA each of them waits for the device; a loop that calls one per iteration stalls the GPU every
iteration. ``torch.cuda.set_sync_debug_mode`` catches every kind of synchronisation, but only on a GPU;
this catches the Python-level ones anywhere.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch

COPIES = ("item", "cpu", "tolist", "numpy", "__bool__", "__float__", "__int__")


@contextmanager
def host_copies(monkeypatch: pytest.MonkeyPatch, *, called_from: str | None = None) -> Iterator[list[str]]:
    """The names of the copying methods called inside the block, in order.

    ``called_from``: count only calls made directly by modules whose name starts with it (e.g.
    ``"lstm_adv"``), leaving out torch's own (an optimizer reading its CPU step counter).
    """
    copies: list[str] = []
    with monkeypatch.context() as patch:
        for name in COPIES:
            patch.setattr(torch.Tensor, name, _recording(getattr(torch.Tensor, name), name, copies, called_from))
        yield copies


def _recording(original: Any, name: str, copies: list[str], called_from: str | None) -> Any:
    def wrapped(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        caller = str(sys._getframe(1).f_globals.get("__name__", ""))
        if called_from is None or caller.startswith(called_from):
            copies.append(name)
        return original(self, *args, **kwargs)

    return wrapped
