"""Hypothesis strategies shared by the test suite (one place, per STYLE)."""

from __future__ import annotations

import types
import typing
from datetime import UTC, datetime
from typing import Any

import attrs
from hypothesis import strategies as st

from lstm_adv.domain.run_id import KINDS, RunId

# --- run store --------------------------------------------------------------------------------

run_kinds = st.sampled_from(KINDS)
run_times = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2200, 1, 1)).map(
    lambda d: d.replace(microsecond=0, tzinfo=UTC)
)
run_tokens = st.text(alphabet="0123456789abcdef", min_size=4, max_size=4)
run_ids = st.builds(RunId, kind=run_kinds, created=run_times, token=run_tokens)

json_scalars = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20) | st.floats(
    allow_nan=False, allow_infinity=False
)
json_values: st.SearchStrategy[Any] = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
json_objects = st.dictionaries(st.text(min_size=1, max_size=12), json_values, max_size=5)


# --- configuration ------------------------------------------------------------------------------


def _strategy_for(tp: Any) -> st.SearchStrategy[Any]:
    origin = typing.get_origin(tp)
    if attrs.has(tp):
        return attrs_instances(tp)
    if origin is typing.Literal:
        return st.sampled_from(typing.get_args(tp))
    if origin is tuple and Ellipsis not in typing.get_args(tp):
        return st.tuples(*(_strategy_for(a) for a in typing.get_args(tp)))
    if origin in (tuple, list):
        item = next(a for a in typing.get_args(tp) if a is not Ellipsis)
        return st.lists(_strategy_for(item), max_size=3).map(origin)
    if origin in (typing.Union, types.UnionType):
        return st.one_of([_strategy_for(a) for a in typing.get_args(tp)])
    simple: dict[Any, st.SearchStrategy[Any]] = {
        int: st.integers(0, 10**6),
        float: st.floats(0, 1e6, allow_nan=False),
        str: st.text(alphabet="abcdefghijklmnopqrstuvwxyz_0123456789", max_size=12),
        bool: st.booleans(),
        type(None): st.none(),
    }
    return simple[tp]


def attrs_instances(cls: type[Any]) -> st.SearchStrategy[Any]:
    """Instances of an attrs config class with every field drawn from its annotated type.

    Classes whose validators reject a draw are filtered (configs with cross-field rules)."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: _strategy_for(hints[f.name]) for f in attrs.fields(cls)}

    def build(values: dict[str, Any]) -> Any:
        try:
            return cls(**values)
        except (ValueError, TypeError):
            return None

    return st.fixed_dictionaries(fields).map(build).filter(lambda v: v is not None)
