"""The runs of a whole pipeline, for the pipeline report: a run's lineage and the runs its summary names."""

from __future__ import annotations

import pandas as pd

from lstm_adv.domain.run_id import RunId
from lstm_adv.results.api.common import aggregates_only
from lstm_adv.results.store import Run, RunStore
from lstm_adv.results.summaries import (
    AnalysisSummary,
    AttackSummary,
    ModelSummary,
    RunSummary,
    TuneAttackSummary,
    TuneModelSummary,
)

#: The stages in pipeline order; the pipeline report lists its runs in this order.
PIPELINE_STAGES = ("synth", "query", "features", "tune-model", "model", "tune-attack", "attack", "analysis")

__all__ = ["PIPELINE_STAGES", "pipeline_overview", "pipeline_runs"]


def references(summary: RunSummary | None) -> tuple[RunId, ...]:
    """The runs a summary names besides the manifest's parents (attack, model and features runs)."""
    if isinstance(summary, AnalysisSummary):
        return (summary.attack_run, summary.features_run)
    if isinstance(summary, AttackSummary | TuneAttackSummary):
        return (summary.model_run, summary.features_run)
    if isinstance(summary, TuneModelSummary):
        return (summary.features_run,)
    if isinstance(summary, ModelSummary) and summary.features_run is not None:
        return (summary.features_run,)
    return ()


def pipeline_runs(run: Run) -> dict[str, Run]:
    """The runs of ``run``'s pipeline by kind: its lineage (parents, their parents, …) and the runs the
    summaries name (:func:`references`), the nearest one of each kind."""
    store = RunStore(run.path.parent)
    found: dict[str, Run] = {}
    queue = [run]
    while queue:
        for member in store.lineage(queue.pop(0)):
            found.setdefault(member.kind, member)
            for ref in references(member.manifest.summary):
                if ref.kind not in found and (store.root / str(ref)).is_dir():
                    queue.append(store.get(str(ref)))
    order = (*PIPELINE_STAGES, *sorted(set(found) - set(PIPELINE_STAGES)))
    return {kind: found[kind] for kind in order if kind in found}


def pipeline_overview(runs: dict[str, Run]) -> pd.DataFrame:
    """One row per stage of the pipeline: ``stage`` (run kind), ``run``, ``created (UTC)``."""
    rows = [(kind, str(r.id), f"{r.manifest.created:%Y-%m-%d %H:%M}") for kind, r in runs.items()]
    return aggregates_only(pd.DataFrame(rows, columns=["stage", "run", "created (UTC)"]))
