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

from lstm_adv.analysis import run_analysis
from lstm_adv.attack import run_attack
from lstm_adv.config import Config
from lstm_adv.database.connection import connect
from lstm_adv.database.demo import load_demo
from lstm_adv.database.server import ServerInfo, ensure_server
from lstm_adv.defend import run_defense
from lstm_adv.domain.errors import RunInterruptedError
from lstm_adv.domain.feature_matrix import split_name
from lstm_adv.domain.run_id import RunId
from lstm_adv.preprocess import run_preprocess
from lstm_adv.query import SOURCE_TABLES, run_cohort_query
from lstm_adv.reports import PIPELINE, render_report
from lstm_adv.results.artifacts import trial_params
from lstm_adv.results.config_file import config_as_dict
from lstm_adv.results.describe import describe_run
from lstm_adv.results.store import Run, RunStore
from lstm_adv.results.summaries import (
    AttackSummary,
    ModelSummary,
    QuerySummary,
    ReportSummary,
    RunSummary,
    SynthSummary,
    TuneAttackSummary,
    TuneModelSummary,
)
from lstm_adv.results.workspace import Workspace
from lstm_adv.robustness import run_robustness
from lstm_adv.synth import run_synth
from lstm_adv.train import run_training
from lstm_adv.tune_attack import run_attack_tuning
from lstm_adv.tune_model import run_model_tuning

log = logging.getLogger(__name__)

#: Whether an earlier run's summary matches what the stage would make now.
Matcher = Callable[[RunSummary | None], bool]
DEMO_SCHEMA = "mimiciii"
# Which configuration sections each run kind depends on (for reuse decisions).
SECTIONS: dict[str, tuple[str, ...]] = {
    "synth": ("synth",),
    "query": ("database", "cohort"),
    "features": ("cohort", "preprocess"),
    "tune-model": ("model", "tune_model"),
    "model": ("model",),
    "tune-attack": ("tune_attack", "attack"),
    "attack": ("attack",),
    "analysis": ("analysis",),
    "defend": ("model", "defend", "pgd"),  # method l1 names its tune-attack run as a parent
    "robustness": ("robustness", "pgd", "attack", "model"),
    "report": (),
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
    """Every stage's outcome, in order, the runs by kind, and the DSN of the server left running."""

    outcomes: tuple[StageOutcome, ...]
    runs: dict[str, Run]
    reports: tuple[Run, ...] = ()
    server_dsn: str = ""


class _Silent:
    def started(self, stage: str) -> None:
        log.info("stage %s started", stage)

    def step(self, stage: str, message: str) -> None:
        log.info("%s: %s", stage, message)

    def finished(self, outcome: StageOutcome) -> None:
        log.info("stage %s finished in %.1f s", outcome.stage, outcome.seconds)


def run_demo(
    workspace: Workspace,
    config: Config,
    *,
    fresh: bool = False,
    synthetic: int | None = None,
    listener: StageListener | None = None,
) -> DemoResult:
    """Run every stage on the embedded PostgreSQL: the shipped MIMIC-III demo, or a synthetic cohort.

    ``synthetic`` = N generates N synthetic admissions (seed ``demo.synthetic_seed``) into schema
    ``synthetic_<N>`` first and runs the same stages on them.
    """
    listen = listener or _Silent()
    config = demo_config(config)
    ctx = _Context(workspace.store, config, fresh, listen)
    server = ctx.timed("database", lambda: _prepare_database(workspace, config, listen, demo=synthetic is None))
    query_parents: tuple[RunId, ...] = ()
    schema = DEMO_SCHEMA
    if synthetic is not None:
        config = _synthetic_config(config, synthetic)
        ctx = _Context(workspace.store, config, fresh, listen)
        schema = config.synth.schema
        synth = ctx.stage(
            "synth",
            parents=(),
            match=lambda s: isinstance(s, SynthSummary) and s.schema == schema,
            make=lambda: run_synth(
                server.dsn,
                config=config,
                store=ctx.store,
                source=f"embedded:{schema}",
                progress=lambda m: listen.step("synth", m),
            ),
            reusable=lambda run: _schema_loaded(server, config, schema),
        )
        query_parents = (synth.id,)
    source = f"embedded:{schema}"
    query = ctx.stage(
        "query",
        parents=query_parents,
        match=lambda s: isinstance(s, QuerySummary) and (s.schema, s.source) == (schema, source),
        make=lambda: run_cohort_query(
            server.dsn,
            schema=schema,
            config=config,
            store=ctx.store,
            parents=query_parents,
            source=source,
            progress=lambda message: listen.step("query", message),
        ),
    )
    features = ctx.stage(
        "preprocess",
        kind="features",
        parents=(query.id,),
        make=lambda: run_preprocess(ctx.store, str(query.id), config),
    )
    trials = config.demo.model_trials
    tuning = ctx.stage(
        "tune-model",
        parents=(features.id,),
        match=lambda s: isinstance(s, TuneModelSummary) and s.n_trials == trials,
        make=lambda: run_model_tuning(
            ctx.store,
            features,
            config,
            trials=trials,
            on_trial=lambda _study, trial: listen.step("tune-model", f"trial {trial.number} finished"),
        ),
    )
    model = ctx.stage(
        "train",
        kind="model",
        parents=(features.id, tuning.id),
        make=lambda: run_training(
            ctx.store,
            features,
            trial_params(tuning)[1],
            config,
            extra_parents=(tuning.id,),
            on_epoch=lambda record: listen.step("train", f"epoch {record.epoch}"),
        ),
    )
    final = _attack_stages(ctx, model)
    robust = _defense_stages(ctx, model, features)
    targets = [
        (final, PIPELINE),
        (model, "model"),
        (features, "data"),
        (final, "attack") if final.kind == "analysis" else None,
        (ctx.runs["tune-attack"], "tuning"),
        (robust, "robustness"),
    ]
    reports = [_report(ctx, workspace, run, document) for run, document in filter(None, targets)]
    return DemoResult(outcomes=tuple(ctx.outcomes), runs=dict(ctx.runs), reports=tuple(reports), server_dsn=server.dsn)


def _defense_stages(ctx: _Context, model: Run, features: Run) -> Run:
    """defend (adaptive, ``demo.defend_epochs``) → robustness of the original and the defended model."""
    config, listen = ctx.config, ctx.listen
    tuned = ctx.runs["tune-attack"]
    defended = ctx.stage(
        "defend",
        kind="model",
        sections="defend",
        parents=(model.id, features.id),
        match=lambda s: isinstance(s, ModelSummary) and s.defense is not None,
        make=lambda: run_defense(
            ctx.store,
            model,
            config,
            on_epoch=lambda record: listen.step("defend", f"epoch {record.epoch}"),
        ),
    )
    ctx.runs["model"] = model  # the original stays "the model" of the pipeline
    return ctx.stage(
        "robustness",
        parents=(model.id, defended.id, tuned.id),
        make=lambda: run_robustness(
            ctx.store, [defended], config, tuned=tuned, progress=lambda m: listen.step("robustness", m)
        ),
    )


def _attack_stages(ctx: _Context, model: Run) -> Run:
    """tune-attack → attack → analyze; returns the last run made (the attack if it had no success)."""
    config, listen = ctx.config, ctx.listen
    demo = config.demo
    tuning = ctx.stage(
        "tune-attack",
        parents=(model.id,),
        match=lambda s: isinstance(s, TuneAttackSummary) and s.n_trials == demo.attack_trials,
        make=lambda: run_attack_tuning(
            ctx.store,
            model,
            config,
            trials=demo.attack_trials,
            on_trial=lambda _study, trial: listen.step("tune-attack", f"trial {trial.number} finished"),
        ),
    )
    attack = ctx.stage(
        "attack",
        parents=(tuning.id,),
        match=lambda s: isinstance(s, AttackSummary) and s.split == split_name(demo.attack_split),
        make=lambda: run_attack(
            ctx.store,
            tuning,
            config,
            split=demo.attack_split,
            progress=lambda n: listen.step("attack", f"batch of {n} samples done"),
        ),
    )
    if not attack.summary_as(AttackSummary).n_successful:
        listen.step("attack", "no successful example: nothing to analyse")
        return attack
    return ctx.stage(
        "analyze", kind="analysis", parents=(attack.id,), make=lambda: run_analysis(ctx.store, str(attack.id), config)
    )


def _report(ctx: _Context, workspace: Workspace, target: Run, document: str) -> Run:
    """Render ``document`` for ``target`` (HTML + PDF) as a report run, or reuse an identical one."""

    def make() -> Run:
        return render_report(target, store=ctx.store, home=workspace.home, document=document)

    return ctx.stage(
        f"report {document}",
        kind="report",
        parents=(target.id,),
        match=lambda s: isinstance(s, ReportSummary) and s.document == document,
        make=make,
    )


def demo_config(config: Config) -> Config:
    """``config`` with the demo's narrowed model search and small attack budgets (section ``demo``) applied."""
    demo = config.demo
    return attrs.evolve(
        config,
        tune_model=attrs.evolve(
            config.tune_model,
            lstm_activations=demo.model_activations,
            fc_activations=demo.model_activations,
            optimizers=demo.model_optimizers,
            learning_rate=demo.model_learning_rate,
        ),
        tune_attack=attrs.evolve(
            config.tune_attack, subset_size=demo.attack_subset, max_iterations=demo.tune_attack_iterations
        ),
        attack=attrs.evolve(config.attack, max_iterations=demo.attack_iterations),
        defend=attrs.evolve(config.defend, method="adaptive", epochs=demo.defend_epochs),
        robustness=attrs.evolve(
            config.robustness,
            eps=demo.robustness_eps,
            l1_max_iterations=demo.robustness_l1_iterations,
            obfuscation_iterations=demo.obfuscation_iterations,
        ),
    )


def _synthetic_config(config: Config, admissions: int) -> Config:
    synth = attrs.evolve(
        config.synth, admissions=admissions, seed=config.demo.synthetic_seed, schema=f"synthetic_{admissions}"
    )
    return attrs.evolve(config, synth=synth)


class _Context:
    """Bookkeeping shared by the stages of one main-job invocation."""

    def __init__(self, store: RunStore, config: Config, fresh: bool, listen: StageListener) -> None:
        self.store = store
        self.config = config
        self.fresh = fresh
        self.listen = listen
        self.outcomes: list[StageOutcome] = []
        self.runs: dict[str, Run] = {}

    def stage(
        self,
        name: str,
        *,
        parents: Sequence[RunId],
        make: Callable[[], Run],
        kind: str | None = None,
        sections: str | None = None,
        match: Matcher | None = None,
        reusable: Callable[[Run], bool] | None = None,
    ) -> Run:
        """Reuse a matching earlier run of the stage, or make one; report either way. ``sections`` names the
        :data:`SECTIONS` entry whose settings decide reuse (default: the run kind's)."""
        self.listen.started(name)
        start = time.perf_counter()
        existing = None
        if not self.fresh:
            existing = find_reusable(
                self.store, kind or name, self.config, parents=parents, match=match, sections=sections
            )
            if existing is not None and reusable is not None and not reusable(existing):
                existing = None
        run = existing or make()
        if not run.complete:  # Ctrl-C inside a stage that keeps its finished part: later stages must not use it
            raise RunInterruptedError(
                f"the demo stopped: {name} was interrupted (run {run.id} keeps what it finished); "
                "run `lstm-adv demo` again to redo that stage and go on"
            )
        outcome = StageOutcome(
            stage=name,
            run_id=run.id,
            reused=existing is not None,
            seconds=time.perf_counter() - start,
            detail=describe_run(run),
        )
        self.outcomes.append(outcome)
        self.runs[run.kind] = run
        self.listen.finished(outcome)
        return run

    def timed(self, name: str, action: Callable[[], tuple[ServerInfo, str]]) -> ServerInfo:
        """Run a step that makes no run (the database), reporting its time."""
        self.listen.started(name)
        start = time.perf_counter()
        server, detail = action()
        outcome = StageOutcome(
            stage=name, run_id=None, reused=False, seconds=time.perf_counter() - start, detail=detail
        )
        self.outcomes.append(outcome)
        self.listen.finished(outcome)
        return server


def find_reusable(
    store: RunStore,
    kind: str,
    config: Config,
    *,
    parents: Sequence[RunId],
    match: Matcher | None = None,
    sections: str | None = None,
) -> Run | None:
    """The newest complete run of ``kind`` made from ``parents`` with the same relevant settings (those of
    :data:`SECTIONS` ``[sections or kind]``)."""
    wanted = config_as_dict(config)
    relevant = SECTIONS.get(sections or kind, tuple(wanted))
    for run in reversed(store.list(kind)):
        manifest = run.manifest
        if manifest.status != "complete" or tuple(manifest.parents) != tuple(parents):
            continue
        if any(_results(manifest.config, s) != _results(wanted, s) for s in relevant):
            continue
        if match is not None and not match(manifest.summary):
            continue
        if run.verify():
            log.warning("run %s changed on disk since it was written; not reusing it", run.id)
            continue
        return run
    return None


#: Settings that change how fast a stage runs, never its results: they do not stop a run from being reused.
SPEED_SETTINGS: dict[str, tuple[str, ...]] = {"attack": ("device", "batch_size", "block_size", "cudnn")}


def _results(config: dict[str, Any], section: str) -> Any:
    """The part of a configuration section that decides a stage's results."""
    values = config.get(section)
    if not isinstance(values, dict):
        return values
    return {key: value for key, value in values.items() if key not in SPEED_SETTINGS.get(section, ())}


def _prepare_database(
    workspace: Workspace, config: Config, listen: StageListener, *, demo: bool
) -> tuple[ServerInfo, str]:
    """Start the embedded server and, for the demo, load it unless its tables are already there."""
    listen.step("database", "starting the embedded PostgreSQL")
    server = ensure_server(workspace.pg_dir, config.embedded)
    if not demo:
        return server, f"PostgreSQL on port {server.port}"
    if _schema_loaded(server, config, DEMO_SCHEMA):
        return server, f"PostgreSQL on port {server.port}; demo already loaded in schema {DEMO_SCHEMA}"
    listen.step("database", "loading the MIMIC-III demo")
    with connect(server.dsn, timeout_s=config.database.connect_timeout_s, autocommit=True) as conn:
        counts = load_demo(conn, schema=DEMO_SCHEMA)
    rows = ", ".join(f"{table} {n:,}" for table, n in counts.items())
    return server, f"PostgreSQL on port {server.port}; loaded {rows}"


def _schema_loaded(server: ServerInfo, config: Config, schema: str) -> bool:
    """Whether ``schema`` holds every MIMIC-III table the queries read."""
    with connect(server.dsn, timeout_s=config.database.connect_timeout_s, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = %s AND table_name = ANY(%s)",
            (schema, list(SOURCE_TABLES)),
        ).fetchone()
    return row is not None and row[0] == len(SOURCE_TABLES)
