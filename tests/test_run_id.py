"""RunId: format, parsing, ordering."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lstm_adv.domain.errors import RunIdError
from lstm_adv.domain.run_id import RunId
from tests.strategies import run_ids


@given(run_ids)
def test_parse_inverts_format(run_id: RunId) -> None:
    """Formatting then parsing gives the same id."""
    assert RunId.parse(str(run_id)) == run_id


@given(run_ids, run_ids, st.integers(1, 10**8))
def test_order_follows_creation_time(a: RunId, other: RunId, seconds: int) -> None:
    """An earlier-created id sorts first, whatever its kind or token."""
    later = attrs.evolve(other, created=a.created + timedelta(seconds=seconds))
    assert a < later
    assert not later < a
    assert sorted([later, a]) == [a, later]


@given(run_ids, run_ids)
def test_string_order_matches_id_order_within_a_kind(a: RunId, other: RunId) -> None:
    """Within one kind, the string form sorts like the id (so `ls` shows runs in time order)."""
    b = attrs.evolve(other, kind=a.kind)
    assert (str(a) < str(b)) == (a < b)
    assert (str(b) < str(a)) == (b < a)


def test_format_shows_kind_and_time() -> None:
    """The string form starts with the kind and carries the UTC timestamp."""
    run_id = RunId(kind="tune-model", created=datetime(2026, 11, 21, 12, 4, 55, tzinfo=UTC), token="a3f9")
    assert str(run_id) == "tune-model-20261121-120455-a3f9"


def test_new_ids_differ() -> None:
    """Two fresh ids of the same kind are distinct."""
    assert len({str(RunId.new("query")) for _ in range(50)}) > 1


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "query-2026-11-21",
            "'query-2026-11-21' is not a run id; expected <kind>-<YYYYMMDD>-<HHMMSS>-<4 hex>, "
            "e.g. query-20261121-120455-a3f9",
        ),
        (
            "query-20261341-120455-a3f9",
            "'query-20261341-120455-a3f9' is not a run id: 20261341-120455 is not a valid date and time",
        ),
    ],
)
def test_parse_rejects_malformed_text(text: str, message: str) -> None:
    """Malformed ids are rejected with a message that shows the expected format."""
    with pytest.raises(RunIdError) as info:
        RunId.parse(text)
    assert str(info.value) == message


def test_unknown_kind_is_rejected() -> None:
    """An id of an unknown kind is an error naming the kinds."""
    with pytest.raises(RunIdError, match=r"RunId\.kind must be one of query, synth"):
        RunId.parse("banana-20261121-120455-a3f9")
