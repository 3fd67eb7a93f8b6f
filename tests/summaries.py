"""Run summaries for tests that write runs by hand (minimal, but of the right class for their kind)."""

from __future__ import annotations

from lstm_adv.domain.perturbation import AttackBatchResult
from lstm_adv.domain.run_id import RunId
from lstm_adv.results.summaries import (
    AttackSummary,
    Batches,
    DirectionStats,
    NormMeans,
    SynthSeconds,
    SynthSummary,
    TuneAttackSummary,
    TunedAttackSettings,
)


def attack_summary(
    result: AttackBatchResult, *, features_run: RunId, model_run: RunId, tuned: RunId | None = None, split: str = "test"
) -> AttackSummary:
    """What an attack run of ``result`` records, made without the attack stage."""
    none = NormMeans(mean_l0=None, mean_l1=None)
    empty = DirectionStats(attacked=0, successful=0, success_rate=0.0, first=none, best=none, sparse=none)
    return AttackSummary(
        tune_attack_run=tuned or model_run,
        model_run=model_run,
        model_trial=None,
        features_run=features_run,
        split=split,
        shard=None,
        batch_size=64,
        batches=Batches(1, 1),
        device="cpu",
        n_samples=result.n,
        n_attacked=int(result.attacked.sum()),
        n_successful=int(result.found.sum()),
        success_rate=result.success_rate,
        iterations=result.iterations,
        directions={"0to1": empty, "1to0": empty},
        decision="threshold",
        threshold=0.5,
        cells="all",
        n_no_cell=0,
        median_l0_sparse=None,
    )


def tune_attack_summary(*, model_run: RunId, features_run: RunId) -> TuneAttackSummary:
    """A finished attack study with one trial (λ 0.01), made without the tuning stage."""
    from lstm_adv.results.summaries import AttackTrial

    trial = AttackTrial(
        number=0,
        state="complete",
        values=(1.0, 3.0),
        settings=TunedAttackSettings(kappa=0.0, lam=0.01, step_size=0.05, method="ista"),
        successes=1,
        last_step=0,
        success_rate=1.0,
        median_l0=3.0,
    )
    return TuneAttackSummary(
        study_name="study",
        storage="file",
        model_run=model_run,
        model_trial=None,
        features_run=features_run,
        objective="pareto",
        max_nonzero=20,
        subset_size=1,
        subset_seed=0,
        chunks=1,
        max_iterations=10,
        n_trials=1,
        states={"complete": 1},
        n_pruned=0,
        best=trial,
        trials=(trial,),
        decision="threshold",
        threshold=0.5,
        cells="all",
        min_success=0.9,
        pareto=(0,),
    )


def synth_summary(*, schema: str = "synthetic", source: str = "embedded", admissions: int = 1) -> SynthSummary:
    """A synth run's summary, made without generating anything."""
    return SynthSummary(
        admissions=admissions,
        seed=0,
        schema=schema,
        source=source,
        tables={},
        deaths=0,
        prevalence=0.0,
        mean_death_probability=0.0,
        oracle_auroc_all=None,
        seconds=SynthSeconds(0.0, 0.0, 0.0),
    )
