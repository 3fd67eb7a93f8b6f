"""A disk that is full: a write that raises ENOSPC, and the one line every stage must answer it with."""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path
from typing import Any, NoReturn


def full_disk(*args: Any, **kwargs: Any) -> NoReturn:
    """Stands in for a write when the disk is full."""
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def assert_one_full_disk_line(output: str, kind: str, home: Path) -> None:
    """``output`` is exactly the one error line for a run of ``kind`` under ``home`` stopped by a full disk, and
    the store holds no temporary run."""
    root = home / "runs"
    pattern = (
        rf"error: no space left on device while writing {kind} run {kind}-\d{{8}}-\d{{6}}-[0-9a-f]{{4}}: nothing of "
        rf"it was kept; free some space for {re.escape(str(root))} and run the command again\n"
    )
    assert re.fullmatch(pattern, output), output
    assert not list((root / ".tmp").iterdir())
