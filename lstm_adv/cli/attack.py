"""`lstm-adv tune-attack` and `lstm-adv attack`: the attack stage, plus how `runs show` prints their runs."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from lstm_adv.cli._common import (
    CELLS_HELP,
    SPLIT_HELP,
    STORAGE_HELP,
    check_at_least,
    check_split,
    console,
    counted,
    dashboard_hint,
    model_weak_warning,
    quiet_optuna,
    state,
    step_progress,
    stop_if_interrupted,
    trial_progress,
    trials_left,
)
from lstm_adv.cli.summaries import register
from lstm_adv.config import THREATS
from lstm_adv.results.store import Run
from lstm_adv.results.summaries import AttackSummary, TuneAttackSummary

# torch and optuna are imported inside the commands so that `lstm-adv --help` stays fast


def tune_attack(
    ctx: typer.Context,
    model: Annotated[
        str | None,
        typer.Option(
            "--model", help="Model run id or prefix, or a tune-model run with --trial [default: the latest model run]."
        ),
    ] = None,
    trial: Annotated[
        int | None, typer.Option("--trial", help="Trial of a tune-model run given as --model [default: its best].")
    ] = None,
    trials: Annotated[
        int | None, typer.Option("--trials", help="New trials to run [default: tune_attack.trials].")
    ] = None,
    objective: Annotated[
        str | None,
        typer.Option(
            "--objective",
            help="pareto (success rate up, median L0 of the sparse examples down), or one of sparsity, "
            "sparse_small, sparse_small_max, max_num_nonzero_perts [default: tune_attack.objective].",
        ),
    ] = None,
    cells: Annotated[
        str | None,
        typer.Option(
            "--cells",
            help=CELLS_HELP,
        ),
    ] = None,
    storage: Annotated[
        str | None,
        typer.Option(
            "--storage",
            help=STORAGE_HELP,
        ),
    ] = None,
    resume: Annotated[
        str | None, typer.Option("--resume", help="Continue the study of this tune-attack run (a new run is written).")
    ] = None,
    device: Annotated[str | None, typer.Option("--device", help="auto, cpu or cuda [default: attack.device].")] = None,
) -> None:
    """Tune the sparse L1 attack (κ, λ, step size, method) with Optuna on a seeded training subset.

    By default a multi-objective study: success rate up, median L0 of the sparse examples down; the
    chosen trial is the Pareto trial with success ≥ tune_attack.min_success and the smallest median L0.
    Single objectives attack the subset in chunks and report the running value, so poor trials are
    pruned. Ctrl-C or SIGTERM keeps finished trials (the run is marked interrupted, exit code 130);
    --resume ID continues the search where it stopped.
    `lstm-adv attack --tuned <id>` then uses the best trial's settings.
    """
    check_at_least("--trials", trials)

    from lstm_adv.tune_attack import run_attack_tuning

    cli = state(ctx)
    config = cli.config({"attack.device": device, "attack.cells": cells})
    store = cli.workspace().store
    resumed = store.get(resume, kind="tune-attack") if resume else None
    model_run = (store.get_complete(model) if model else store.latest("model")) if (model or not resumed) else None
    total = trials if trials is not None else config.tune_attack.trials
    quiet_optuna()
    with trial_progress(total) as on_trial:
        run = run_attack_tuning(
            store,
            model_run,
            config,
            trial=trial,
            trials=trials,
            objective=objective,
            storage=storage,
            resume=resumed,
            on_trial=on_trial,
        )
    summary = run.summary_as(TuneAttackSummary)
    finished = sum(summary.states.get(s, 0) for s in ("complete", "pruned", "failed"))
    stop_if_interrupted(run, counted(finished, "trial"), left=trials_left(finished, summary.budget))
    render_tuning(run, console)
    model_weak_warning(store, summary.model_run, console)
    console.print(f"tune-attack run {run.id}")


def attack(
    ctx: typer.Context,
    tuned: Annotated[
        str | None, typer.Option("--tuned", help="Tune-attack run id or prefix [default: the latest].")
    ] = None,
    split: Annotated[str | None, typer.Option("--split", help=SPLIT_HELP)] = None,
    shard: Annotated[
        str | None,
        typer.Option(
            "--shard",
            help="Attack only shard i of n (e.g. 2/4); once all n shards finished, they are "
            "merged into one run automatically.",
        ),
    ] = None,
    resume: Annotated[
        str | None, typer.Option("--resume", help="Complete this interrupted attack run (a new run is written).")
    ] = None,
    cells: Annotated[
        str | None,
        typer.Option(
            "--cells",
            help=CELLS_HELP,
        ),
    ] = None,
    include_misclassified: Annotated[
        bool | None,
        typer.Option(
            "--include-misclassified/--skip-misclassified",
            help="Also attack samples the model already misclassifies [default: attack.include_misclassified].",
        ),
    ] = None,
    device: Annotated[str | None, typer.Option("--device", help="auto, cpu or cuda [default: attack.device].")] = None,
) -> None:
    """Attack a split with the best settings of a tune-attack run, against the model it was tuned on.

    Ctrl-C or SIGTERM keeps the finished batches (the run is marked interrupted, exit code 130);
    --resume ID completes it.
    With --shard i/n only every n-th batch is attacked (run the n shards anywhere, e.g. in parallel).
    """
    check_split(split)
    from lstm_adv.attack import Shard, merge_attack_shards, run_attack

    cli = state(ctx)
    config = cli.config(
        {"attack.device": device, "attack.include_misclassified": include_misclassified, "attack.cells": cells}
    )
    store = cli.workspace().store
    parsed = Shard.parse(shard) if shard is not None else None
    resumed = store.get(resume, kind="attack") if resume else None
    tuned_run = store.resolve(tuned, "tune-attack") if (tuned or not resumed) else None
    with step_progress("attack", None) as advance:
        run = run_attack(
            store,
            tuned_run,
            config,
            split=split,
            shard=parsed,
            resume=resumed,
            progress=lambda n: advance("samples", n),
        )
    summary = run.summary_as(AttackSummary)
    batches = summary.batches
    stop_if_interrupted(run, f"{batches.done} of {counted(batches.total, 'sample')}")
    render_attack(run, console)
    model_weak_warning(store, summary.model_run, console)
    console.print(f"attack run {run.id}")
    if summary.shard and run.manifest.status == "complete":
        count = Shard.parse(summary.shard).count
        tuned_of_run = store.get(str(summary.tune_attack_run), kind="tune-attack")
        merged = merge_attack_shards(store, tuned_of_run, split=summary.split, count=count, reference=run)
        if merged is None:
            console.print(f"shard {summary.shard} done; the shards are merged once all {count} have finished")
        elif run.id in merged.manifest.parents:
            console.print(f"all {count} shards finished: merged attack run {merged.id}")
        else:
            console.print(f"these {count} shards were merged before: attack run {merged.id}")


def _number(value: Any, fmt: str = ".3g") -> str:
    return "—" if value is None else format(value, fmt)


def _rule(decision: str, threshold: float) -> str:
    return "argmax (t = 0.5)" if decision == "argmax" else f"threshold t = {threshold:.3f}"


@register("tune-attack")
def render_tuning(run: Run, out: Console) -> None:
    """Objective, subset, trial counts, the Pareto front (multi-objective) and the chosen trial's settings."""
    s = run.summary_as(TuneAttackSummary)
    states = ", ".join(f"{count} {name}" for name, count in s.states.items()) or "none"
    out.print(
        f"study {s.study_name} in {s.storage}: {s.n_trials} trials ({states}); objective {s.objective} on "
        f"{s.subset_size} training samples (seed {s.subset_seed}), model {s.model_run}; decision rule "
        f"{_rule(s.decision, s.threshold)}; cells {s.cells}"
    )
    out.print(dashboard_hint(run, s.storage), highlight=False, soft_wrap=True)
    best = s.best
    if best is None or best.settings is None:
        out.print("no completed trial yet")
        return
    rows = [t for t in s.trials if t.number in s.pareto] if s.pareto else [best]
    title = (
        f"Pareto front; chosen: trial {best.number} (success ≥ {s.min_success:.0%} with the smallest median L0, "
        "else the highest success)"
        if s.pareto
        else f"best trial {best.number}: {s.objective} {_number(best.value, '.4g')}"
    )
    table = Table("trial", "success rate", "median L0 (sparse)", "method", "λ", "step", "κ", "passes f/b", title=title)
    for trial in sorted(rows, key=lambda t: t.number):
        settings = trial.settings
        if settings is None:
            continue
        mark = " ✓" if trial.number == best.number else ""
        table.add_row(
            f"{trial.number}{mark}",
            _number(trial.success_rate, ".3f"),
            _number(trial.median_l0, ".1f"),
            settings.method,
            _number(settings.lam),
            _number(settings.step_size),
            _number(settings.kappa),
            f"{_number(trial.forward_passes, '.0f')}/{_number(trial.backward_passes, '.0f')}",
        )
    out.print(table)


@register("attack")
def render_attack(run: Run, out: Console) -> None:
    """The rule, the cells, success and the sizes of the first, best and sparse examples per direction."""
    s = run.summary_as(AttackSummary)
    shard = f", shard {s.shard}" if s.shard else ""
    skipped = s.n_samples - s.n_attacked
    unit = "altered measurements" if s.unit == "measurement" else "changed cells"
    rate = s.success.text(".3f") if s.success is not None else _number(s.success_rate, ".3f")
    out.print(
        f"{s.split} split{shard}: {s.n_attacked} of {s.n_samples} samples attacked ({skipped} skipped: "
        f"misclassified at the rule, or {s.n_no_cell} with nothing the threat may change); {s.n_successful} "
        f"flipped (success rate {rate}); decision rule {_rule(s.decision, s.threshold)}; threat "
        f"{s.cells}: {THREATS.get(s.cells, s.cells)}; {s.iterations} iterations per sample; model {s.model_run}",
        highlight=False,
    )
    if s.median_l0_interval is not None and s.median_l0_interval.value is not None:
        moved = f", moving a median of {_number(s.median_input_l0_sparse, '.1f')} model-input cells"
        out.print(
            f"sparse examples: median {unit} {s.median_l0_interval.text('.1f')}"
            f"{moved if s.unit == 'measurement' else ''} (95 % bootstrap intervals)",
            highlight=False,
        )
    table = Table(
        "direction",
        "attacked",
        "flipped",
        "rate",
        "median L0 first / best / sparse",
        "mean L1 best / sparse",
        title=f"examples; L0 counts {unit} (best: the smallest-L1 successful iterate; sparse: best pruned to a "
        "minimal support)",
    )
    for name, entry in s.directions.items():
        l0 = " / ".join(_number(x.median_l0, ".1f") for x in (entry.first, entry.best, entry.sparse))
        l1 = " / ".join(_number(x.mean_l1, ".3f") for x in (entry.best, entry.sparse))
        table.add_row(
            name.replace("to", "→"),
            str(entry.attacked),
            str(entry.successful),
            _number(entry.success_rate, ".3f"),
            l0,
            l1,
        )
    out.print(table)
