"""The manifest: what a run is, where it came from, how it was made, and its typed summary."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import attrs

from lstm_adv.domain.errors import RunStoreError
from lstm_adv.domain.run_id import RunId, a_kind
from lstm_adv.results.converter import describe_error, structure, unstructure
from lstm_adv.results.summaries import SUMMARY_TYPES, RunSummary

STATUSES = ("complete", "interrupted")


@attrs.frozen
class Manifest:
    """Stored as ``manifest.json`` in every run folder; written last, so its presence marks a finished write.

    ``summary`` is the summary class of the run's kind (:data:`SUMMARY_TYPES`), or ``None`` for a run
    that records none.
    """

    id: RunId
    kind: str
    created: datetime
    parents: tuple[RunId, ...]
    config: dict[str, Any]
    package_version: str
    git_commit: str | None
    status: str = attrs.field(validator=attrs.validators.in_(STATUSES))
    checksums: dict[str, str] = attrs.Factory(dict)
    summary: RunSummary | None = None

    def __attrs_post_init__(self) -> None:
        expected = SUMMARY_TYPES.get(self.kind)
        if self.summary is not None and not isinstance(self.summary, expected or ()):
            raise RunStoreError(
                f"run {self.id}: {a_kind(self.kind)} run needs a {getattr(expected, '__name__', 'no')} summary, "
                f"got {type(self.summary).__name__}"
            )

    def to_data(self) -> dict[str, Any]:
        """Plain JSON-ready data (the summary by its own class)."""
        fields = {field.name: getattr(self, field.name) for field in attrs.fields(_ManifestFields)}
        data: dict[str, Any] = unstructure(_ManifestFields(**fields))
        data["summary"] = None if self.summary is None else unstructure(self.summary, type(self.summary))
        return data

    @classmethod
    def from_data(cls, data: Any) -> Manifest:
        """Rebuild from :meth:`to_data`'s form; a summary that does not fit its class is a :class:`RunStoreError`."""
        raw = dict(data)
        summary_data = raw.pop("summary", None)
        manifest = structure(raw, _ManifestFields)
        summary = None
        if summary_data is not None:
            kind = SUMMARY_TYPES.get(manifest.kind)
            if kind is None:
                raise RunStoreError(f"run {manifest.id}: runs of kind {manifest.kind!r} record no summary")
            try:
                summary = structure(summary_data, kind)
            except Exception as exc:  # cattrs raises exception groups; one line says what does not fit
                raise RunStoreError(
                    f"run {manifest.id} was written by another version of lstm-adv (its summary does not fit: "
                    f"{describe_error(exc, kind)}); re-run its stage to use it"
                ) from None
        return cls(**attrs.asdict(manifest, recurse=False), summary=summary)


@attrs.frozen
class _ManifestFields:
    """The manifest without its summary (structured first, to learn the kind)."""

    id: RunId
    kind: str
    created: datetime
    parents: tuple[RunId, ...]
    config: dict[str, Any]
    package_version: str
    git_commit: str | None
    status: str = attrs.field(validator=attrs.validators.in_(STATUSES))
    checksums: dict[str, str] = attrs.Factory(dict)
