"""Benchmark of the defenses at scale: do static, adaptive, sparse-L1 and TRADES adversarial training help?

On a synthetic cohort (default 20,000 admissions, made in the embedded PostgreSQL of ``--home``):
synth → query → preprocess → the baseline model (``--model-trials`` N > 0: tune-model with N trials,
then train with the best trial; 0: the [model] defaults) → tune-attack on it (the tuned sparse L1
attack, ``--attack-trials``) → one defense per ``--methods`` at the shipped [defend] defaults
(``--epochs`` overrides defend.epochs): ``static``, ``adaptive`` (Madry, PGD-L∞ per batch), ``l1``
(fresh sparse L1 examples from the tuned attack) and ``trades`` (adaptive with the TRADES loss) →
two robustness runs over all of them, each judging every model by fresh attacks on its final weights:
PGD-L∞ across ``--eps-linf`` (with the tuned sparse L1 attack, before vs after) and PGD-L2 across
``--eps-l2``, both with the gradient-obfuscation check. Every run is kept in ``--home`` and reused
by the next invocation when its settings are unchanged, so the benchmark can be resumed and extended.

Reported per model (baseline / static / adaptive / l1 / trades): the defense's wall time; clean test
AUROC, AUPRC and F1 with 95 % bootstrap intervals at the model's own decision rule; robust accuracy,
robust recall of deaths and AUROC under PGD-L∞ and PGD-L2 at every ε; the tuned L1 attack's success
rate and the median L0 of its sparse examples; whether unbounded PGD reaches robust accuracy ≈ 0
(otherwise the evaluation of that model may be unreliable). A line gives ε in clinical units for a
few features (ε · (p95 − p5)).

Prints the tables (Markdown); writes bench/results/defenses.json and bench/results/defenses.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import attrs
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_sparse import log, prepare_model, reuse_or  # the same cohort and baseline pipeline

from lstm_adv.config import Config
from lstm_adv.defend import run_defense
from lstm_adv.results.config_file import config_as_dict, load_config
from lstm_adv.results.store import Run, RunStore
from lstm_adv.results.summaries import ModelSummary, RobustnessSummary
from lstm_adv.results.workspace import Workspace
from lstm_adv.robustness import run_robustness
from lstm_adv.targets import features_run_of
from lstm_adv.tune_attack import run_attack_tuning

RESULTS = Path(__file__).parent / "results" / "defenses.json"
METHODS = ("static", "adaptive", "l1", "trades")
CLINICAL = ("sysbp", "heartrate", "glucose", "potassium")


def method_config(config: Config, method: str) -> Config:
    """The shipped [defend] defaults for one benchmark row (``trades``: adaptive with the TRADES loss)."""
    if method == "trades":
        return attrs.evolve(config, defend=attrs.evolve(config.defend, method="adaptive", loss="trades"))
    return attrs.evolve(config, defend=attrs.evolve(config.defend, method=method, loss="ce"))


def _same_sections(run: Run, config: Config, sections: tuple[str, ...]) -> bool:
    wanted = config_as_dict(config)
    return all(run.manifest.config.get(section) == wanted.get(section) for section in sections)


def reusable(
    store: RunStore, kind: str, config: Config, parents: tuple[Any, ...], sections: tuple[str, ...]
) -> Run | None:
    """The newest complete run of ``kind`` with exactly these parents and these config sections (defended models
    are runs of kind ``model``, told apart by their [defend] and [pgd] settings)."""
    for run in reversed(store.list(kind)):
        if run.manifest.status != "complete" or tuple(run.manifest.parents) != tuple(parents):
            continue
        if _same_sections(run, config, sections) and not run.verify():
            return run
    return None


def defend(store: RunStore, config: Config, baseline: Run, features_id: Any, tuned: Run, method: str) -> Run:
    """One defense of the baseline, reused when a run with the same settings exists."""
    config = method_config(config, method)
    parents = (baseline.id, features_id, *((tuned.id,) if method == "l1" else ()))
    found = reusable(store, "model", config, parents, ("defend", "pgd", "attack", "model"))
    if found is not None:
        log(f"defend {method}: reusing {found.id}")
        return found
    start = time.perf_counter()
    run = run_defense(store, baseline, config, tuned=tuned if method == "l1" else None)
    log(f"defend {method}: {run.id} in {time.perf_counter() - start:.0f} s")
    return run


def robustness(
    store: RunStore, config: Config, baseline: Run, models: list[Run], tuned: Run, attack: str, eps: list[float]
) -> Run:
    """A robustness run over the defended models (their baseline is added first), reused when unchanged."""
    l1 = config.robustness.l1_max_iterations if attack == "pgd-linf" else 0
    settings = attrs.evolve(config.robustness, attack=attack, eps=tuple(eps), l1_max_iterations=l1)
    config = attrs.evolve(config, robustness=settings)
    parents = (baseline.id, *(m.id for m in models), *((tuned.id,) if l1 else ()))
    found = reusable(store, "robustness", config, parents, ("robustness", "pgd", "attack", "model"))
    if found is not None:
        log(f"robustness {attack}: reusing {found.id}")
        return found
    start = time.perf_counter()
    run = run_robustness(store, models, config, tuned=tuned if l1 else None)
    log(f"robustness {attack}: {run.id} in {time.perf_counter() - start:.0f} s")
    return run


def _estimate(summary: ModelSummary, name: str) -> dict[str, float | None]:
    e = (summary.test or {})[name]
    return {"value": e.value, "low": e.low, "high": e.high}


def model_row(run: Run, label: str, sweeps: dict[str, RobustnessSummary]) -> dict[str, Any]:
    """What the tables show for one model, from its model run and the two robustness runs."""
    summary = run.summary_as(ModelSummary)
    defense = summary.defense
    linf = sweeps["pgd-linf"]
    l1 = linf.l1.by_model.get(str(run.id), {})
    row: dict[str, Any] = {
        "defense": label,
        "model_run": str(run.id),
        "decision": summary.decision,
        "threshold": summary.threshold,
        "seconds": defense.seconds if defense is not None else None,
        "train_seconds": (summary.seconds_per_epoch or 0.0) * (summary.epochs_run or 0) if defense is None else None,
        "robust_validation": None if defense is None else defense.robust_validation,
        "clean": {name: _estimate(summary, name) for name in ("auroc", "auprc", "f1")},
        "l1": {"success_rate": l1.get("success_rate"), "median_l0_sparse": l1.get("median_l0_sparse")},
        "pgd": {},
        "obfuscation": {},
    }
    for attack, sweep in sweeps.items():
        row["pgd"][attack] = {
            f"{r.eps:g}": {
                "robust_accuracy": r.robust_accuracy,
                "robust_recall": r.robust_recall,
                "robust_auroc": r.robust_auroc,
            }
            for r in sweep.table
            if str(r.model) == str(run.id)
        }
        check = sweep.obfuscation.get(str(run.id))
        row["obfuscation"][attack] = None if check is None else attrs.asdict(check)
    return row


def _num(value: float | None, spec: str = ".3f") -> str:
    return "—" if value is None else format(value, spec)


def _ci(estimate: dict[str, float | None]) -> str:
    return f"{_num(estimate['value'])} [{_num(estimate['low'])}, {_num(estimate['high'])}]"


def _obfuscation(row: dict[str, Any]) -> str:
    parts = []
    for attack, check in row["obfuscation"].items():
        if check is not None:
            verdict = "ok" if check["reliable"] else "UNRELIABLE"
            parts.append(f"{attack.removeprefix('pgd-')} {check['robust_accuracy']:.3f} {verdict}")
    return ", ".join(parts) or "—"


def tables(report: dict[str, Any]) -> str:
    """The benchmark's tables as Markdown."""
    rows = report["models"]
    lines = [
        f"Defenses on a synthetic cohort of {report['admissions']:,} admissions: test split n = {report['n_test']:,}, "
        f"{report['device']}, {report['threads']} thread(s); defense epochs {report['epochs']}; each model judged by "
        "fresh attacks on its final weights, at its own decision rule.",
        "",
        "| defense | wall s | AUROC [95 % CI] | AUPRC [95 % CI] | F1 [95 % CI] | L1 success | L1 median L0 | "
        "robust val. acc. (training attack) | unbounded PGD robust acc. |",
        "|:--|--:|:--|:--|:--|--:|--:|--:|:--|",
    ]
    for r in rows:
        wall = f"{r['seconds']:.0f}" if r["seconds"] is not None else f"({r['train_seconds']:.0f} train)"
        lines.append(
            f"| {r['defense']} | {wall} | {_ci(r['clean']['auroc'])} | {_ci(r['clean']['auprc'])} | "
            f"{_ci(r['clean']['f1'])} | {_num(r['l1']['success_rate'])} | {_num(r['l1']['median_l0_sparse'], '.1f')} | "
            f"{_num(r['robust_validation'])} | {_obfuscation(r)} |"
        )
    for attack, eps in (("pgd-linf", report["eps_linf"]), ("pgd-l2", report["eps_l2"])):
        budgets = [f"{e:g}" for e in eps]
        lines += [
            "",
            f"{attack}: robust accuracy / robust recall of deaths / AUROC under attack (ε = 0: clean)",
            "",
            "| defense | " + " | ".join(f"ε = {b}" for b in budgets) + " |",
            "|:--|" + "--:|" * len(budgets),
        ]
        for r in rows:
            cells = []
            for b in budgets:
                point = r["pgd"][attack].get(b, {})
                cells.append(
                    " / ".join(_num(point.get(k), ".2f") for k in ("robust_accuracy", "robust_recall", "robust_auroc"))
                )
            lines.append(f"| {r['defense']} | " + " | ".join(cells) + " |")
    clinical = report.get("clinical_eps")
    if clinical:
        lines += ["", "ε in clinical units (ε · (p95 − p5)): " + "; ".join(clinical)]
    return "\n".join(lines)


def clinical_line(summary: RobustnessSummary) -> list[str]:
    """ε of the sweep for a few features in their units, e.g. "ε = 0.05: sysbp 2.9 mmHg"."""
    scales = {s.feature: s for s in summary.scales if s.feature in CLINICAL}
    return [
        f"ε = {eps:g}: " + ", ".join(f"{name} {eps * s.span:.3g} {s.unit}" for name, s in scales.items())
        for eps in summary.eps
        if eps > 0
    ]


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", default=str(Path(__file__).parent / "results" / "defenses-home"))
    parser.add_argument("--admissions", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic cohort")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    parser.add_argument("--model-trials", type=int, default=20, help="tune-model trials (0: the [model] defaults)")
    parser.add_argument("--attack-trials", type=int, default=0, help="tune-attack trials (0: tune_attack.trials)")
    parser.add_argument("--tune-subset", type=int, default=0, help="tune-attack subset (0: tune_attack.subset_size)")
    parser.add_argument(
        "--tune-iterations",
        type=int,
        default=0,
        help="tune-attack iterations per round (0: tune_attack.max_iterations)",
    )
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--epochs", type=int, default=0, help="defense epochs (0: defend.epochs)")
    parser.add_argument("--monitor-samples", type=int, default=-1, help="defend.monitor_samples (-1: the default)")
    parser.add_argument("--eps-linf", default="", help="PGD-L∞ sweep, comma-separated (default: robustness.eps)")
    parser.add_argument("--eps-l2", default="0,0.25,0.5,1,2", help="PGD-L2 sweep, comma-separated")
    parser.add_argument(
        "--l1-iterations", type=int, default=0, help="robustness L1 attack iterations per round (0: the default)"
    )
    parser.add_argument(
        "--obfuscation-iterations", type=int, default=0, help="obfuscation check PGD steps (0: the default)"
    )
    args, _unknown = parser.parse_known_args(argv)  # run_all.py passes the same options to every script
    return args


def base_config(args: argparse.Namespace) -> Config:
    overrides: dict[str, Any] = {
        "synth.admissions": args.admissions,
        "synth.seed": args.seed,
        "synth.schema": f"synthetic_{args.admissions}",
        "model.device": args.device,
        "attack.device": args.device,
    }
    optional = {
        "tune_attack.subset_size": args.tune_subset,
        "tune_attack.max_iterations": args.tune_iterations,
        "defend.epochs": args.epochs,
        "robustness.l1_max_iterations": args.l1_iterations,
        "robustness.obfuscation_iterations": args.obfuscation_iterations,
    }
    overrides |= {key: value for key, value in optional.items() if value}
    if args.monitor_samples >= 0:
        overrides["defend.monitor_samples"] = args.monitor_samples
    if args.eps_linf:
        overrides["robustness.eps"] = [float(e) for e in args.eps_linf.split(",")]
    return load_config(overrides=overrides)


def main(argv: list[str]) -> int:
    args = parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    config = base_config(args)
    workspace = Workspace(Path(args.home).absolute())
    workspace.store.root.mkdir(parents=True, exist_ok=True)
    store = workspace.store
    baseline = prepare_model(args, config, workspace)
    trials = args.attack_trials or config.tune_attack.trials
    tuned = reuse_or(
        store,
        "tune-attack",
        config,
        (baseline.id,),
        lambda: run_attack_tuning(store, baseline, config, trials=trials),
        match=lambda s: s is not None and s.n_trials == trials and s.cells == config.attack.cells,
    )
    features_id = features_run_of(store, baseline).id
    defended = {m: defend(store, config, baseline, features_id, tuned, m) for m in args.methods}
    eps_l2 = [float(e) for e in args.eps_l2.split(",")]
    runs = list(defended.values())
    sweeps = {
        "pgd-linf": robustness(store, config, baseline, runs, tuned, "pgd-linf", list(config.robustness.sweep)),
        "pgd-l2": robustness(store, config, baseline, runs, tuned, "pgd-l2", eps_l2),
    }
    summaries = {attack: run.summary_as(RobustnessSummary) for attack, run in sweeps.items()}
    labelled = [("baseline", baseline), *defended.items()]
    report: dict[str, Any] = {
        "command": "python bench/bench_defenses.py " + " ".join(argv),
        "admissions": args.admissions,
        "device": "cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu",
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() and args.device != "cpu" else None,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "epochs": config.defend.epochs,
        "defend": attrs.asdict(config.defend),
        "pgd": attrs.asdict(config.pgd),
        "n_test": summaries["pgd-linf"].n,
        "eps_linf": list(config.robustness.sweep),
        "eps_l2": sorted(set(eps_l2)),
        "tune_attack_run": str(tuned.id),
        "robustness_runs": {attack: str(run.id) for attack, run in sweeps.items()},
        "l1_settings": summaries["pgd-linf"].l1.settings,
        "clinical_eps": clinical_line(summaries["pgd-linf"]),
        "models": [model_row(run, label, summaries) for label, run in labelled],
    }
    text = tables(report)
    print("\n" + text)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2, default=str))
    RESULTS.with_suffix(".md").write_text(f"`{report['command']}`\n\n{text}\n")
    print(f"\nwrote {RESULTS} and {RESULTS.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
