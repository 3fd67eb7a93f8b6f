"""The manifest: what a run is, where it came from, and how it was made."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import attrs

from lstm_adv.domain.run_id import RunId

STATUSES = ("complete", "interrupted")


@attrs.frozen
class Manifest:
    """Stored as ``manifest.json`` in every run folder; written last, so its presence marks a finished write."""

    id: RunId
    kind: str
    created: datetime
    parents: tuple[RunId, ...]
    config: dict[str, Any]
    package_version: str
    git_commit: str | None
    status: str = attrs.field(validator=attrs.validators.in_(STATUSES))
    checksums: dict[str, str] = attrs.Factory(dict)
    summary: dict[str, Any] = attrs.Factory(dict)
