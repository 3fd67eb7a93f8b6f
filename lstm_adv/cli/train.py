"""`lstm-adv train` and `lstm-adv tune-model`: the model stage, plus how `runs show` prints their runs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from lstm_adv.cli._common import (
    STORAGE_HELP,
    check_at_least,
    console,
    counted,
    dashboard_hint,
    fail,
    quiet_optuna,
    state,
    step_progress,
    stop_if_interrupted,
    trial_progress,
    trials_left,
    weak_warning,
)
from lstm_adv.cli.summaries import register
from lstm_adv.domain.run_id import RunId
from lstm_adv.results.store import Run, RunStore
from lstm_adv.results.summaries import Estimate, ModelSummary, TuneModelSummary

# torch and optuna are imported inside the commands so that `lstm-adv --help` stays fast
REPORTED = ("auroc", "auprc", "f1", "precision", "recall", "brier")


def train(
    ctx: typer.Context,
    data: Annotated[str | None, typer.Option("--data", help="Features run id or prefix [default: the latest].")] = None,
    params: Annotated[
        Path | None, typer.Option("--params", help="JSON/TOML file of the nine hyperparameters (e.g. a params.json).")
    ] = None,
    tuned_model: Annotated[
        str | None, typer.Option("--tuned-model", help="Take the hyperparameters from this tune-model run.")
    ] = None,
    trial: Annotated[
        int | None, typer.Option("--trial", help="Trial number of --tuned-model [default: its best trial].")
    ] = None,
    cv: Annotated[
        bool, typer.Option("--cv", help="Cross-validate over the K folds (mean ± sd) instead of the test split.")
    ] = False,
    decision: Annotated[
        str | None,
        typer.Option(
            "--decision",
            help="The decision rule every later stage uses: threshold (t chosen on validation, max F1) or argmax "
            "(t = 0.5, Sun et al.) [default: model.decision].",
        ),
    ] = None,
    device: Annotated[str | None, typer.Option("--device", help="auto, cpu or cuda [default: model.device].")] = None,
    defaults: Annotated[
        bool,
        typer.Option(
            "--defaults", help="Train the [model] defaults even when a tune-model run of these features exists."
        ),
    ] = False,
) -> None:
    """Train the BiLSTM with early stopping on validation and score the held-out test split once.

    Hyperparameters come from a --params file, a --tuned-model run, or else the best trial of the latest
    complete tune-model run of the same features run when there is one (said in one line; --defaults takes
    the [model] config section instead), else the [model] section. Prints the new model run's id and its
    test metrics with 95 % bootstrap intervals.
    """
    if sum((params is not None, tuned_model is not None, defaults)) > 1:
        fail("give one of --params, --tuned-model and --defaults")
    if trial is not None and tuned_model is None:
        fail("--trial needs --tuned-model")
    from lstm_adv.results.artifacts import trial_params
    from lstm_adv.train import load_params_file, params_from_config, run_training

    cli = state(ctx)
    config = cli.config({"model.device": device, "model.decision": decision})
    store = cli.workspace().store
    features_run = store.resolve(data, "features")
    extra: list[RunId] = []
    tune_run = (
        store.get_complete(tuned_model, kind="tune-model")
        if tuned_model is not None
        else None
        if params is not None or defaults
        else latest_tuning_of(store, features_run)
    )
    if tune_run is not None:
        number, hyper = trial_params(tune_run, trial)
        extra.append(tune_run.id)
        how = (
            ""
            if tuned_model is not None
            else " (the latest tune-model run of these features; --defaults trains [model])"
        )
        console.print(f"hyperparameters of trial {number} of {tune_run.id}{how}", highlight=False, markup=False)
    else:
        hyper = load_params_file(params) if params is not None else params_from_config(config.model)
    folds = features_run_folds(features_run) if cv else 1
    with step_progress("training", config.model.max_epochs * folds) as advance:
        run = run_training(
            store,
            features_run,
            hyper,
            config,
            cv=cv,
            extra_parents=extra,
            on_epoch=lambda record: advance(f"val AUROC {record.val_auroc:.4f}"),
        )
    render_model(run, console)
    console.print(f"model run {run.id}")


def features_run_folds(run: Run) -> int:
    """Number of folds of a features run (for the progress bar only)."""
    from lstm_adv.results.artifacts import load_features

    return max(1, load_features(run).n_folds)


def tune_model(
    ctx: typer.Context,
    data: Annotated[str | None, typer.Option("--data", help="Features run id or prefix [default: the latest].")] = None,
    trials: Annotated[
        int | None, typer.Option("--trials", help="New trials to run [default: tune_model.trials].")
    ] = None,
    storage: Annotated[
        str | None,
        typer.Option(
            "--storage",
            help=STORAGE_HELP,
        ),
    ] = None,
    resume: Annotated[
        str | None, typer.Option("--resume", help="Continue the study of this tune-model run (a new run is written).")
    ] = None,
    workers: Annotated[int, typer.Option("--workers", help="Processes working on the study on this machine.")] = 1,
    device: Annotated[str | None, typer.Option("--device", help="auto, cpu or cuda [default: model.device].")] = None,
) -> None:
    """Search the BiLSTM hyperparameter space with Optuna (TPE, median pruning on validation AUROC).

    Ctrl-C or SIGTERM keeps the finished trials (the run is marked interrupted, exit code 130);
    --resume ID continues the search where it stopped, re-running the interrupted trial first.
    Every completed trial's weights are kept, so `train --tuned-model <id>` or an attack can use them.
    """
    check_at_least("--trials", trials)
    check_at_least("--workers", workers)

    from lstm_adv.tune_model import run_model_tuning

    cli = state(ctx)
    config = cli.config({"model.device": device})
    store = cli.workspace().store
    resumed = store.get(resume, kind="tune-model") if resume else None
    features_run = store.resolve(data, "features") if (data or not resumed) else None
    total = trials if trials is not None else config.tune_model.trials
    quiet_optuna()
    with trial_progress(total) as on_trial:
        run = run_model_tuning(
            store,
            features_run,
            config,
            trials=trials,
            storage=storage,
            resume=resumed,
            workers=workers,
            on_trial=on_trial,
        )
    summary = run.summary_as(TuneModelSummary)
    finished = sum(summary.states.get(s, 0) for s in ("complete", "pruned", "failed"))
    stop_if_interrupted(run, counted(finished, "trial"), left=trials_left(finished, summary.budget))
    render_tuning(run, console)
    console.print(f"tune-model run {run.id}")


def _interval(entry: Estimate | None) -> str:
    if entry is None or entry.value is None:
        return "—"
    bounds = f" ({entry.low:.4f}–{entry.high:.4f})" if entry.low is not None and entry.high is not None else ""
    return f"{entry.value:.4f}{bounds}"


def _fixed(value: float | None, fmt: str = ".4f") -> str:
    return "—" if value is None else format(value, fmt)


@register("model")
def render_model(run: Run, out: Console) -> None:
    """The test metrics table (or the cross-validation mean ± sd) of a model run."""
    summary = run.summary_as(ModelSummary)
    if summary.cv:
        table = Table("metric", "mean", "sd", "folds", title=f"{summary.n_folds}-fold cross-validation")
        for name in REPORTED:
            folds = ", ".join(_fixed(v, ".3f") for v in (summary.folds or {}).get(name, ()))
            table.add_row(name, _fixed((summary.mean or {}).get(name)), _fixed((summary.sd or {}).get(name)), folds)
        out.print(table)
        return
    conf = summary.confidence or 0.95
    table = Table("metric", f"test ({conf:.0%} bootstrap interval)", title="held-out test split")
    for name in REPORTED:
        table.add_row(name, _interval((summary.test or {}).get(name)))
    if summary.oracle_test_auroc is not None:
        table.add_row("oracle AUROC (generator)", f"{summary.oracle_test_auroc:.4f}")
    out.print(table)
    (tn, fp), (fn, tp) = summary.confusion_matrix or ((0, 0), (0, 0))
    n, prevalence = summary.n or {}, summary.prevalence or {}
    rule = (
        "argmax (t = 0.5)"
        if summary.decision == "argmax"
        else f"threshold t = {_fixed(summary.threshold)} (max F1 on validation)"
    )
    out.print(f"decision rule: {rule}; confusion tn={tn} fp={fp} fn={fn} tp={tp}")
    if summary.saturated is not None:
        out.print(
            f"[yellow]warning: this model is saturated: {summary.saturated}; attacks will refuse it. Try a "
            "bounded activation (tanh) or a lower learning rate.[/yellow]"
        )
    weak_warning(summary, out)
    recalibrated = summary.recalibration
    if recalibrated is not None and summary.learned is not None:
        out.print(
            f"calibration: mean test P(death) {recalibrated.test_mean_probability:.3f} vs prevalence "
            f"{_fixed(prevalence.get('test'), '.3f')}; Brier {recalibrated.test_brier:.3f} (a constant predictor: "
            f"{summary.learned.constant_brier:.3f}); after Platt recalibration on validation "
            f"{recalibrated.test_brier_recalibrated:.3f}",
            highlight=False,
        )
    out.print(
        f"best epoch {summary.best_epoch} of {summary.epochs_run}; n train/val/test "
        f"{n.get('train')}/{n.get('validation')}/{n.get('test')}; test prevalence "
        f"{_fixed(prevalence.get('test'), '.3f')}; {_fixed(summary.seconds_per_epoch, '.2f')} s/epoch on "
        f"{summary.device}"
    )


def latest_tuning_of(store: RunStore, features_run: Run) -> Run | None:
    """The newest complete tune-model run of ``features_run`` with a best trial (None when there is none)."""
    from lstm_adv.results.summaries import TuneModelSummary

    runs = [
        run
        for run in store.list("tune-model")
        if run.complete
        and isinstance(run.manifest.summary, TuneModelSummary)
        and run.manifest.summary.features_run == features_run.id
        and run.manifest.summary.best is not None
    ]
    return runs[-1] if runs else None


@register("tune-model")
def render_tuning(run: Run, out: Console) -> None:
    """Trial counts, the best trial and its hyperparameters."""
    summary = run.summary_as(TuneModelSummary)
    states = ", ".join(f"{count} {state}" for state, count in summary.states.items()) or "none"
    out.print(f"study {summary.study_name} in {summary.storage}: {summary.n_trials} trials ({states})")
    out.print(dashboard_hint(run, summary.storage), highlight=False, soft_wrap=True)
    best = summary.best
    if best is None or best.params is None:
        out.print("no completed trial yet")
        return
    table = Table("hyperparameter", "value", title=f"best trial {best.number}: validation AUROC {_fixed(best.value)}")
    for name, value in best.params.to_dict().items():
        table.add_row(name, f"{value:.3g}" if isinstance(value, float) else str(value))
    out.print(table)
