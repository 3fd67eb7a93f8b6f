"""The main job (`lstm-adv demo`): every stage in order on one source, reusing unchanged runs.

A stage's earlier run is reused when it finished, has the same parents, and was made with the same
settings in the configuration sections the stage reads (and, for the query, the same source and
schema). ``fresh=True`` recomputes everything. Each stage reports through a :class:`StageListener`
so the CLI can show progress; the library itself only logs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import attrs

from lstm_adv.config import Config
from lstm_adv.database.connection import connect
from lstm_adv.database.demo import load_demo
from lstm_adv.database.server import ServerInfo, ensure_server
from lstm_adv.domain.run_id import RunId
from lstm_adv.preprocess import run_preprocess
from lstm_adv.query import SOURCE_TABLES, run_cohort_query
from lstm_adv.results.config_file import config_as_dict
from lstm_adv.results.store import Run, RunStore
from lstm_adv.workspace import Workspace

log = logging.getLogger(__name__)

DEMO_SCHEMA = "mimiciii"
# Which configuration sections each run kind depends on (for reuse decisions).
SECTIONS: dict[str, tuple[str, ...]] = {
    "query": ("database", "cohort"),
    "features": ("cohort", "preprocess"),
}


class StageListener(Protocol):
    """Told when a stage starts, what it is doing, and how it ended."""

    def started(self, stage: str) -> None: ...

    def step(self, stage: str, message: str) -> None: ...

    def finished(self, outcome: StageOutcome) -> None: ...


@attrs.frozen
class StageOutcome:
    """What one stage of the main job produced."""

    stage: str
    run_id: RunId | None
    reused: bool
    seconds: float
    detail: str


@attrs.frozen
class DemoResult:
    """Every stage's outcome, in order, and the runs by kind."""

    outcomes: tuple[StageOutcome, ...]
    runs: dict[str, Run]


class _Silent:
    def started(self, stage: str) -> None:
        log.info("stage %s started", stage)

    def step(self, stage: str, message: str) -> None:
        log.info("%s: %s", stage, message)

    def finished(self, outcome: StageOutcome) -> None:
        log.info("stage %s finished in %.1f s", outcome.stage, outcome.seconds)


def run_demo(
    workspace: Workspace, config: Config, *, fresh: bool = False, listener: StageListener | None = None
) -> DemoResult:
    """Run every available stage on the shipped MIMIC-III demo in the embedded PostgreSQL."""
    listen = listener or _Silent()
    store = workspace.store
    outcomes: list[StageOutcome] = []
    runs: dict[str, Run] = {}

    server = _timed(listen, outcomes, "database", lambda: _prepare_demo_database(workspace, config, listen))
    runs["query"] = _stage(
        listen, outcomes, "query", store, config, parents=(), fresh=fresh,
        match={"schema": DEMO_SCHEMA, "source": f"embedded:{DEMO_SCHEMA}"},
        make=lambda: run_cohort_query(
            server.dsn, schema=DEMO_SCHEMA, config=config, store=store, source=f"embedded:{DEMO_SCHEMA}",
            progress=lambda message: listen.step("query", message),
        ),
        detail=_query_detail,
    )  # fmt: skip
    runs["features"] = _stage(
        listen, outcomes, "preprocess", store, config, parents=(runs["query"].id,), fresh=fresh, kind="features",
        make=lambda: run_preprocess(store, str(runs["query"].id), config),
        detail=_features_detail,
    )  # fmt: skip
    return DemoResult(outcomes=tuple(outcomes), runs=runs)


def find_reusable(
    store: RunStore,
    kind: str,
    config: Config,
    *,
    parents: Sequence[RunId],
    match: dict[str, Any] | None = None,
) -> Run | None:
    """The newest complete run of ``kind`` made from ``parents`` with the same relevant settings."""
    wanted = config_as_dict(config)
    sections = SECTIONS.get(kind, tuple(wanted))
    for run in reversed(store.list(kind)):
        manifest = run.manifest
        if manifest.status != "complete" or tuple(manifest.parents) != tuple(parents):
            continue
        if any(manifest.config.get(section) != wanted.get(section) for section in sections):
            continue
        if any(manifest.summary.get(key) != value for key, value in (match or {}).items()):
            continue
        if run.verify():
            log.warning("run %s changed on disk since it was written; not reusing it", run.id)
            continue
        return run
    return None


def _stage(
    listen: StageListener,
    outcomes: list[StageOutcome],
    name: str,
    store: RunStore,
    config: Config,
    *,
    parents: Sequence[RunId],
    fresh: bool,
    make: Callable[[], Run],
    detail: Callable[[Run], str],
    kind: str | None = None,
    match: dict[str, Any] | None = None,
) -> Run:
    listen.started(name)
    start = time.perf_counter()
    existing = None if fresh else find_reusable(store, kind or name, config, parents=parents, match=match)
    run = existing or make()
    outcome = StageOutcome(
        stage=name, run_id=run.id, reused=existing is not None, seconds=time.perf_counter() - start, detail=detail(run)
    )
    outcomes.append(outcome)
    listen.finished(outcome)
    return run


def _timed(
    listen: StageListener, outcomes: list[StageOutcome], name: str, action: Callable[[], tuple[ServerInfo, str]]
) -> ServerInfo:
    listen.started(name)
    start = time.perf_counter()
    server, detail = action()
    outcome = StageOutcome(stage=name, run_id=None, reused=False, seconds=time.perf_counter() - start, detail=detail)
    outcomes.append(outcome)
    listen.finished(outcome)
    return server


def _prepare_demo_database(workspace: Workspace, config: Config, listen: StageListener) -> tuple[ServerInfo, str]:
    """Start the embedded server and load the demo unless its tables are already there."""
    listen.step("database", "starting the embedded PostgreSQL")
    server = ensure_server(workspace.pg_dir, config.embedded)
    with connect(server.dsn, timeout_s=config.database.connect_timeout_s, autocommit=True) as conn:
        present = conn.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = %s AND table_name = ANY(%s)",
            (DEMO_SCHEMA, list(SOURCE_TABLES)),
        ).fetchone()
        if present is not None and present[0] == len(SOURCE_TABLES):
            return server, f"PostgreSQL on port {server.port}; demo already loaded in schema {DEMO_SCHEMA}"
        listen.step("database", "loading the MIMIC-III demo")
        counts = load_demo(conn, schema=DEMO_SCHEMA)
    rows = ", ".join(f"{table} {n:,}" for table, n in counts.items())
    return server, f"PostgreSQL on port {server.port}; loaded {rows}"


def _query_detail(run: Run) -> str:
    flow = run.manifest.summary.get("flow", [])
    return " → ".join(f"{step['step']} {step['count']:,}" for step in flow)


def _features_detail(run: Run) -> str:
    summary = run.manifest.summary
    shape = summary.get("shape")
    positives = summary.get("positives")
    return f"shape {shape}, positives {positives}" if shape else "feature matrix written"
