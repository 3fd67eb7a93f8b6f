"""`lstm-adv defend` and `lstm-adv robustness`: adversarial training and robustness curves, and `runs show`."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from lstm_adv.cli._common import check_split, console, fail, state, step_progress
from lstm_adv.cli.summaries import register
from lstm_adv.config import THREATS
from lstm_adv.results.store import Run
from lstm_adv.results.summaries import ModelSummary, RobustnessSummary

# torch is imported inside the commands so that `lstm-adv --help` stays fast
_SHOWN = ("clean_accuracy", "robust_accuracy", "robust_recall", "robust_auroc", "robust_auprc", "success_rate")


def defend(
    ctx: typer.Context,
    model: Annotated[str | None, typer.Option("--model", help="Model run to harden [default: the latest].")] = None,
    method: Annotated[
        str | None,
        typer.Option(
            "--method",
            help="static (PGD examples made once), adaptive (Madry: fresh PGD examples against the current "
            "weights) or l1 (fresh sparse L1 examples, the tuned attack with a bounded budget) "
            "[default: defend.method].",
        ),
    ] = None,
    attack: Annotated[str | None, typer.Option("--attack", help="pgd-linf or pgd-l2 [default: defend.attack].")] = None,
    eps: Annotated[
        float | None, typer.Option("--eps", help="Budget ε of the training examples [default: defend.eps].")
    ] = None,
    epochs: Annotated[int | None, typer.Option("--epochs", help="Fine-tuning epochs [default: defend.epochs].")] = None,
    mix: Annotated[
        float | None,
        typer.Option(
            "--mix", help="Share of training samples replaced by their adversarial example [default: defend.mix]."
        ),
    ] = None,
    target: Annotated[
        int | None,
        typer.Option(
            "--target",
            help="Targeted examples towards this class (0: deaths look like survivals) [default: untargeted].",
        ),
    ] = None,
    regenerate: Annotated[
        str | None,
        typer.Option("--regenerate", help="Adaptive: fresh examples every batch (Madry) or epoch [default: batch]."),
    ] = None,
    loss: Annotated[
        str | None,
        typer.Option(
            "--loss",
            help="Adaptive: ce (cross-entropy on the mix) or trades (CE on clean + β·KL to the adversarial "
            "prediction) [default: defend.loss].",
        ),
    ] = None,
    beta: Annotated[
        float | None, typer.Option("--beta", help="TRADES weight β of the KL term [default: defend.beta].")
    ] = None,
    tuned: Annotated[
        str | None,
        typer.Option(
            "--tuned",
            help="l1: tune-attack run whose settings make the examples [default: the newest one tuned against "
            "the model].",
        ),
    ] = None,
    cells: Annotated[
        str | None,
        typer.Option("--cells", help="l1: the examples' threat, record, observed or all [default: attack.cells]."),
    ] = None,
    device: Annotated[str | None, typer.Option("--device", help="auto, cpu or cuda [default: model.device].")] = None,
) -> None:
    """Fine-tune a trained model on adversarial examples: static or adaptive PGD training (optionally TRADES),
    or training against the sparse L1 attack.

    The result is a new model run (parent: the original model) that every later stage accepts;
    judge it with `lstm-adv robustness --model <new id>`, which attacks its final weights afresh.
    """
    from lstm_adv.defend import run_defense

    cli = state(ctx)
    overrides = {
        "defend.method": method,
        "defend.attack": attack,
        "defend.eps": eps,
        "defend.epochs": epochs,
        "defend.mix": mix,
        "defend.regenerate": regenerate,
        "defend.loss": loss,
        "defend.beta": beta,
        "attack.cells": cells,
        "pgd.target": target,
        "model.device": device,
    }
    config = cli.config(overrides)
    store = cli.workspace().store
    model_run = store.resolve(model, "model")
    tuned_run = store.get(tuned, kind="tune-attack") if tuned else None
    with step_progress("fine-tuning", config.defend.epochs) as advance:
        run = run_defense(
            store,
            model_run,
            config,
            tuned=tuned_run,
            on_epoch=lambda r: advance(f"clean val AUROC {r.val_auroc:.4f}"),
        )
    from lstm_adv.cli.train import render_model

    render_model(run, console)
    defense = run.summary_as(ModelSummary).defense
    if defense is not None:
        budget = "" if defense.eps is None else f" ε={defense.eps}"
        loss_text = f", TRADES β={defense.beta}" if defense.loss == "trades" else ""
        robust = (
            "" if defense.robust_validation is None else f"; robust validation accuracy {defense.robust_validation:.3f}"
        )
        console.print(
            f"{defense.method} defense with {defense.attack}{budget}{loss_text}: "
            f"{defense.regenerations} example generation(s) in {defense.seconds or 0:.0f} s{robust}"
        )
    console.print(f"model run {run.id}")


def _floats(text: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        fail(f"--eps must be a comma-separated list of numbers, e.g. 0,0.01,0.02; got {text!r}")


def robustness(
    ctx: typer.Context,
    model: Annotated[str | None, typer.Option("--model", help="Model run to evaluate [default: the latest].")] = None,
    models: Annotated[
        str | None, typer.Option("--models", help="More model runs, comma-separated (ids or prefixes).")
    ] = None,
    eps: Annotated[
        str | None,
        typer.Option("--eps", help="Comma-separated ε sweep, e.g. 0,0.01,0.02,0.05 [default: robustness.eps]."),
    ] = None,
    attack: Annotated[
        str | None, typer.Option("--attack", help="pgd-linf or pgd-l2 [default: robustness.attack].")
    ] = None,
    target: Annotated[
        int | None, typer.Option("--target", help="Targeted PGD towards this class (0: deaths → survivals).")
    ] = None,
    split: Annotated[
        str | None, typer.Option("--split", help="test, validation (or val) or train [default: test].")
    ] = None,
    l1_iterations: Annotated[
        int | None,
        typer.Option(
            "--l1-iterations",
            help="Iterations per λ-search round of the sparse L1 attack against every model (0 skips it) "
            "[default: robustness.l1_max_iterations].",
        ),
    ] = None,
    tuned: Annotated[
        str | None,
        typer.Option(
            "--tuned",
            help="Tune-attack run whose settings the L1 attack uses [default: the newest one tuned against the "
            "(original) model].",
        ),
    ] = None,
    cells: Annotated[
        str | None,
        typer.Option("--cells", help="The L1 attack's threat: record, observed or all [default: attack.cells]."),
    ] = None,
    obfuscation_iterations: Annotated[
        int | None,
        typer.Option(
            "--obfuscation-iterations",
            help="Steps of the unbounded PGD of the gradient-obfuscation check (0 skips it) "
            "[default: robustness.obfuscation_iterations].",
        ),
    ] = None,
    device: Annotated[str | None, typer.Option("--device", help="auto, cpu or cuda [default: model.device].")] = None,
) -> None:
    """Fresh PGD attacks against each model's final weights across an ε sweep, plus the tuned sparse L1 attack.

    Reports clean and robust accuracy, robust recall of deaths, AUROC under attack and confusion
    matrices per model and ε; a defended model is compared with its original automatically.
    `lstm-adv report <id>` draws the curves.
    """
    check_split(split, ("train", "validation", "val", "test"))
    from lstm_adv.robustness import run_robustness

    cli = state(ctx)
    overrides = {
        "robustness.eps": _floats(eps) if eps is not None else None,
        "robustness.attack": attack,
        "robustness.split": split,
        "robustness.l1_max_iterations": l1_iterations,
        "robustness.obfuscation_iterations": obfuscation_iterations,
        "attack.cells": cells,
        "pgd.target": target,
        "model.device": device,
    }
    config = cli.config(overrides)
    store = cli.workspace().store
    refs = [model] + [m.strip() for m in (models or "").split(",") if m.strip()]
    runs = [store.resolve(ref, "model") for ref in dict.fromkeys(refs)]
    with console.status("attacking…") as status:
        tuned_run = store.get(tuned, kind="tune-attack") if tuned else None
        run = run_robustness(store, runs, config, tuned=tuned_run, progress=lambda text: status.update(text))
    render_robustness(run, console)
    console.print(f"robustness run {run.id}")


def _value(value: Any) -> str:
    return "—" if value is None else f"{value:.3f}"


@register("robustness")
def render_robustness(run: Run, out: Console) -> None:
    """Per model and ε: clean / robust accuracy, robust recall of deaths, AUROC under attack; L1 before vs after."""
    summary = run.summary_as(RobustnessSummary)
    defenses = {str(m.model): m.defense for m in summary.models}
    rules = Table("#", "model", "defense", "decision rule", "attack pool", title="models (each judged at its own rule)")
    rules.columns[1].no_wrap = True
    for number, m in enumerate(summary.models, start=1):
        key = str(m.model)
        rules.add_row(str(number), key, m.defense, summary.decisions.get(key, "?"), str(summary.pool.get(key, "?")))
    out.print(rules)
    out.print(f"the L1 attack's threat: {summary.cells} ({THREATS.get(summary.cells, summary.cells)})", highlight=False)
    if out.width < WIDE:
        out.print(_narrow_sweep(summary))
    else:
        out.print(_wide_sweep(summary, defenses))
    _print_l1(summary, defenses, out)
    _print_obfuscation(summary, defenses, out)


#: Below this width the sweep table names each model by its number in the models table and puts each interval
#: under its value, so that a terminal of 80 columns shows every figure whole.
WIDE = 140
#: Short headers of the narrow sweep table.
_SHORT = {
    "clean_accuracy": "clean acc",
    "robust_accuracy": "rob. acc",
    "robust_recall": "recall",
    "robust_auroc": "AUROC",
    "robust_auprc": "AUPRC",
    "success_rate": "success",
}


def _title(summary: RobustnessSummary) -> str:
    return (
        f"fresh {summary.attack} on the {summary.split} split (n={summary.n}); 95 % intervals: Wilson for rates, "
        "bootstrap for AUROC / AUPRC"
    )


def _wide_sweep(summary: RobustnessSummary, defenses: dict[str, str]) -> Table:
    table = Table(
        "model",
        "defense",
        "ε",
        *_SHOWN,
        title=_title(summary),
    )
    table.columns[0].no_wrap = True  # ids are never cut to an ambiguous prefix
    for row in summary.table:
        cells = [row.text(metric) for metric in _SHOWN]
        table.add_row(str(row.model), defenses.get(str(row.model), "?"), f"{row.eps:g}", *cells)
    return table


def _narrow_sweep(summary: RobustnessSummary) -> Table:
    """The sweep for a narrow terminal: model number and defense, ε, and per metric its value over its interval."""
    numbers = {str(m.model): f"{i} {m.defense}" for i, m in enumerate(summary.models, start=1)}
    table = Table(
        "model",
        "ε",
        *(_SHORT[m] for m in _SHOWN),
        title=_title(summary),
        box=None,
        pad_edge=False,
        padding=(0, 1),
        collapse_padding=True,
    )
    for column in table.columns:
        column.no_wrap = True
    for row in summary.table:
        cells = []
        for metric in _SHOWN:
            value = getattr(row, metric)
            interval = row.intervals.get(metric)
            text = "—" if value is None else f"{value:.3f}"
            cells.append(text if interval is None or value is None else f"{text}\n{interval[0]:.2f}–{interval[1]:.2f}")
        table.add_row(numbers.get(str(row.model), str(row.model)), f"{row.eps:g}", *cells)
    return table


def _print_l1(summary: RobustnessSummary, defenses: dict[str, str], out: Console) -> None:
    if not summary.l1.by_model:
        return
    tuned = f" (settings of {summary.l1.tuned})" if summary.l1.tuned is not None else ""
    narrow = out.width < WIDE
    numbers = {str(m.model): f"{i} {m.defense}" for i, m in enumerate(summary.models, start=1)}
    heads = ("attacked", "success rate", "median L0 sparse", "mean L0 best", "mean L1 best")
    l1_table = Table(*(("model",) if narrow else ("model", "defense")), *heads, title=f"tuned sparse L1 attack{tuned}")
    l1_table.columns[0].no_wrap = True
    for model, stats in summary.l1.by_model.items():
        names = (numbers.get(model, model),) if narrow else (model, defenses.get(model, "?"))
        l1_table.add_row(
            *names,
            f"{stats.get('attacked') or 0:.0f}",
            _value(stats.get("success_rate")),
            _value(stats.get("median_l0_sparse")),
            _value(stats.get("mean_l0")),
            _value(stats.get("mean_l1")),
        )
    out.print(l1_table)


def _print_obfuscation(summary: RobustnessSummary, defenses: dict[str, str], out: Console) -> None:
    for model, check in summary.obfuscation.items():
        verdict = "ok" if check.reliable else "[red]the evaluation may be unreliable (gradients may be masked)[/red]"
        out.print(
            f"obfuscation check, {defenses.get(model, '?')} {model}: unbounded PGD ({check.iterations} steps) leaves "
            f"robust accuracy {check.robust_accuracy:.3f} (≤ {check.tolerance:g} expected): {verdict}"
        )
