"""Run ids: sortable by creation time, and telling their kind at a glance.

Format: ``<kind>-<YYYYMMDD>-<HHMMSS>-<4 hex>``, e.g. ``query-20261121-120455-a3f9``.
"""

from __future__ import annotations

import re
import secrets
from datetime import UTC, datetime

import attrs

from lstm_adv.domain.errors import RunIdError

KINDS: tuple[str, ...] = (
    "query",
    "synth",
    "features",
    "tune-model",
    "model",
    "tune-attack",
    "attack",
    "analysis",
    "robustness",
    "report",
)

_PATTERN = re.compile(r"^(?P<kind>[a-z][a-z-]*[a-z])-(?P<date>\d{8})-(?P<time>\d{6})-(?P<token>[0-9a-f]{4})$")


def _check_kind(instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    if value not in KINDS:
        raise RunIdError(f"RunId.kind must be one of {', '.join(KINDS)}; got {value!r}")


def _check_created(instance: object, attribute: attrs.Attribute[datetime], value: datetime) -> None:
    if value.tzinfo is None or value.microsecond != 0:
        raise RunIdError(f"RunId.created must be timezone-aware with whole seconds; got {value!r}")


def _check_token(instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    if not re.fullmatch(r"[0-9a-f]{4}", value):
        raise RunIdError(f"RunId.token must be 4 lower-case hex digits; got {value!r}")


@attrs.frozen(order=False)
class RunId:
    """The identity of one run. Orders by creation time, then token."""

    kind: str = attrs.field(validator=_check_kind)
    created: datetime = attrs.field(validator=_check_created)
    token: str = attrs.field(validator=_check_token)

    @classmethod
    def new(cls, kind: str, *, now: datetime | None = None) -> RunId:
        """A fresh id of ``kind`` stamped with the current UTC second."""
        stamp = (now or datetime.now(UTC)).astimezone(UTC).replace(microsecond=0)
        return cls(kind=kind, created=stamp, token=secrets.token_hex(2))

    @classmethod
    def parse(cls, text: str) -> RunId:
        """Parse the string form; raises :class:`RunIdError` naming the expected format."""
        match = _PATTERN.match(text)
        if match is None:
            raise RunIdError(
                f"{text!r} is not a run id; expected <kind>-<YYYYMMDD>-<HHMMSS>-<4 hex>, "
                "e.g. query-20261121-120455-a3f9"
            )
        try:
            created = datetime.strptime(match["date"] + match["time"], "%Y%m%d%H%M%S").replace(tzinfo=UTC)
        except ValueError:
            raise RunIdError(
                f"{text!r} is not a run id: {match['date']}-{match['time']} is not a valid date and time"
            ) from None
        return cls(kind=match["kind"], created=created, token=match["token"])

    def __str__(self) -> str:
        return f"{self.kind}-{self.created:%Y%m%d-%H%M%S}-{self.token}"

    def _key(self) -> tuple[datetime, str, str]:
        return (self.created, self.token, self.kind)

    def __lt__(self, other: RunId) -> bool:
        return self._key() < other._key()

    def __le__(self, other: RunId) -> bool:
        return self._key() <= other._key()

    def __gt__(self, other: RunId) -> bool:
        return self._key() > other._key()

    def __ge__(self, other: RunId) -> bool:
        return self._key() >= other._key()


def a_kind(kind: str) -> str:
    """The run kind with its article, as a sentence names it: ``a model``, ``an attack``, ``an analysis``."""
    return f"{'an' if kind[:1] in 'aeiou' else 'a'} {kind}"
