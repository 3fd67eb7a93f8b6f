"""Benchmark of the sparse attack's science: success at the model's rule, sparsity, measured cells, EAD.

On a synthetic cohort (default 20,000 admissions, made in the embedded PostgreSQL of ``--home``):
synth → query → preprocess → a model (``--model-trials`` N > 0: tune-model with N trials, then train
with the best trial; 0: train with the [model] defaults) → for each cell set (``all``: Sun et al.'s
attack; ``observed``: only cells that held a measurement) tune-attack (``--attack-trials``, default
``tune_attack.trials``) → the tuned attack on the test split's first ``--test-samples`` samples (all
by default). Every stage's run is kept in ``--home`` and reused by the next invocation when its
settings are unchanged, so the benchmark can be resumed and extended.

Reported per cell set: success rate at the model's decision rule, median L0 of the sparse examples
(targets: success ≥ 0.95 and median L0 ≤ 20 of 912 cells), the share of changed cells that held a
real measurement (target with ``observed``: 100 %), seconds per attacked sample, and how many of the
top-5 features by susceptibility S_j = Σ_i GMP_ij·GPP_ij of the sparse examples are among the
generator's 5 most informative features (by the correlation of one measurement with the latent
severity, load / √(1 + noise²), see :mod:`lstm_adv.synth.physiology`).

Side by side (cell set ``all``, the same model and samples): ART's ElasticNet (EAD, a benchmark-only
dependency; skipped when it is not installed) with its own binary search over its constant, at an
equal total iteration budget (its ``binary_search_steps`` × ``max_iter`` = our ``search_steps`` ×
``max_iterations``), deciding at the same rule (the model's logits are shifted by the rule's boundary,
so that argmax is the rule). Targets: our success ≥ theirs, our median L0 ≤ 0.5 × theirs.

``--demo``: also runs ``lstm-adv demo``'s pipeline on the shipped MIMIC-III demo (in ``--home``/demo)
and checks that every sample correct at the model's rule with a cell to change is attacked, and the
median L0 of the sparse examples (target ≤ 30).

Prints a table; writes bench/results/sparse.json.
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
import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lstm_adv.analysis import cell_stats
from lstm_adv.attacks import L1Attack
from lstm_adv.config import Config
from lstm_adv.database.server import ensure_server
from lstm_adv.domain.decision import DecisionRule
from lstm_adv.domain.perturbation import AttackBatchResult
from lstm_adv.pipeline import find_reusable, run_demo
from lstm_adv.preprocess import run_preprocess
from lstm_adv.query import run_cohort_query
from lstm_adv.results import artifacts
from lstm_adv.results.config_file import load_config
from lstm_adv.results.store import Run, RunStore
from lstm_adv.results.summaries import AttackSummary, SynthSummary, TuneModelSummary
from lstm_adv.results.workspace import Workspace
from lstm_adv.synth import run_synth
from lstm_adv.synth.physiology import PHYSIOLOGY
from lstm_adv.targets import allowed_cells, attack_mask, resolve_target, tuned_settings
from lstm_adv.train import params_from_config, run_training
from lstm_adv.tune_attack import run_attack_tuning
from lstm_adv.tune_model import run_model_tuning

RESULTS = Path(__file__).parent / "results" / "sparse.json"
TOP = 5


def informative_features(top: int = TOP) -> list[str]:
    """The generator's ``top`` features by |corr(one measurement, severity)| = |load| / √(1 + noise²)."""
    score = {p.name: abs(p.load) / float(np.sqrt(1.0 + p.noise**2)) for p in PHYSIOLOGY}
    return sorted(score, key=lambda name: -score[name])[:top]


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def reuse_or(store: RunStore, kind: str, config: Config, parents: tuple[Any, ...], make: Any, match: Any = None) -> Run:
    """An earlier complete run of ``kind`` with the same parents and settings, or a new one."""
    found = find_reusable(store, kind, config, parents=parents, match=match)
    if found is not None:
        log(f"{kind}: reusing {found.id}")
        return found
    start = time.perf_counter()
    run = make()
    log(f"{kind}: {run.id} in {time.perf_counter() - start:.0f} s")
    return run


def prepare_model(args: argparse.Namespace, config: Config, workspace: Workspace) -> Run:
    """synth → query → preprocess → (tune-model →) train; every run reused when unchanged."""
    store = workspace.store
    server = ensure_server(workspace.pg_dir, config.embedded)
    schema = config.synth.schema
    source = f"embedded:{schema}"
    synth = reuse_or(
        store,
        "synth",
        config,
        (),
        lambda: run_synth(server.dsn, config=config, store=store, source=source),
        match=lambda s: isinstance(s, SynthSummary) and s.schema == schema,
    )
    query = reuse_or(
        store,
        "query",
        config,
        (synth.id,),
        lambda: run_cohort_query(
            server.dsn, schema=schema, config=config, store=store, parents=(synth.id,), source=source
        ),
    )
    features = reuse_or(store, "features", config, (query.id,), lambda: run_preprocess(store, str(query.id), config))
    if args.model_trials > 0:
        tuning = reuse_or(
            store,
            "tune-model",
            config,
            (features.id,),
            lambda: run_model_tuning(store, features, config, trials=args.model_trials),
            match=lambda s: isinstance(s, TuneModelSummary) and s.n_trials == args.model_trials,
        )
        params = artifacts.trial_params(tuning)[1]
        return reuse_or(
            store,
            "model",
            config,
            (features.id, tuning.id),
            lambda: run_training(store, features, params, config, extra_parents=(tuning.id,)),
        )
    return reuse_or(
        store,
        "model",
        config,
        (features.id,),
        lambda: run_training(store, features, params_from_config(config.model), config),
    )


def attack_cells(
    args: argparse.Namespace, config: Config, store: RunStore, model_run: Run, cells: str
) -> tuple[dict[str, Any], AttackBatchResult, Any]:
    """Tune the attack on ``cells`` and run it on the test samples; the figures, the result and its inputs."""
    config = attrs.evolve(config, attack=attrs.evolve(config.attack, cells=cells))
    trials = args.attack_trials or config.tune_attack.trials
    tuned = reuse_or(
        store,
        "tune-attack",
        config,
        (model_run.id,),
        lambda: run_attack_tuning(store, model_run, config, trials=trials),
        match=lambda s: s is not None and s.n_trials == trials and s.cells == cells,
    )
    target = resolve_target(store, model_run)
    features = artifacts.load_features(target.features_run)
    device = torch.device(args.device)
    model, decision = target.load(features, device)
    rows = features.indices("test")
    if args.test_samples:
        rows = rows[: args.test_samples]
    settings = tuned_settings(tuned, config.attack)
    spec = artifacts.feature_definitions(target.features_run).to_spec()
    attack = L1Attack(
        model,
        settings,
        decision=decision,
        device=device,
        mask=attack_mask(config.attack, spec),
        batch_size=config.attack.batch_size,
        max_batch_size=len(rows),
        cudnn=config.attack.cudnn,
    )
    allowed = allowed_cells(config.attack, features, rows)
    start = time.perf_counter()
    result = attack.run(features.values[rows], features.labels[rows], sample_index=rows, allowed=allowed)
    seconds = time.perf_counter() - start
    found = result.found
    sparse = result.deltas("sparse")[found]
    observed = features.observed
    measured = None
    if observed is not None and found.any():
        changed = sparse != 0
        measured = float((changed & observed[rows[found]]).sum() / max(int(changed.sum()), 1))
    susceptibility = cell_stats(sparse).feature_susceptibility if found.any() else np.zeros(len(spec.features))
    names = [f.name for f in spec.features]
    top = [names[j] for j in np.argsort(-susceptibility, kind="stable")[:TOP]]
    informative = informative_features()
    l0 = result.l0("sparse")[found]
    figures = {
        "cells": cells,
        "tune_attack_run": str(tuned.id),
        "trials": trials,
        "chosen_trial": None if tuned.manifest.summary.best is None else tuned.manifest.summary.best.number,
        "settings": attrs.asdict(settings),
        "decision": decision.rule,
        "threshold": decision.threshold,
        "samples": len(rows),
        "correct_at_rule": int((result.predicted == result.label).sum()),
        "attacked": int(result.attacked.sum()),
        "no_cell": int((result.skip == 2).sum()),
        "successful": int(found.sum()),
        "success_rate": result.success_rate,
        "median_l0_sparse": float(np.median(l0)) if l0.size else None,
        "mean_l0_sparse": float(l0.mean()) if l0.size else None,
        "median_l0_best": float(np.median(result.l0("best")[found])) if l0.size else None,
        "measured_share": measured,
        "seconds": seconds,
        "seconds_per_attacked_sample": seconds / max(int(result.attacked.sum()), 1),
        "top_features_sparse": top,
        "informative_features": informative,
        "top_in_informative": len(set(top) & set(informative)),
    }
    return figures, result, (model, decision, features, rows, settings)


class _AtRule(nn.Module):
    """The model with z₁ shifted by the rule's boundary, so that argmax decides as the rule does."""

    def __init__(self, model: nn.Module, decision: DecisionRule) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("shift", torch.tensor([0.0, -decision.boundary]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) + self.shift


def compare_ead(args: argparse.Namespace, ours: AttackBatchResult, inputs: Any) -> dict[str, Any] | None:
    """ART's ElasticNet on the samples our attack attacked (at most ``--ead-samples``), equal budget, on CPU."""
    try:
        from art.attacks.evasion import ElasticNet
        from art.estimators.classification import PyTorchClassifier
    except ImportError:
        return None
    model, decision, features, rows, settings = inputs
    picked = np.flatnonzero(ours.attacked)[: args.ead_samples]
    wrapped = _AtRule(model.cpu().eval(), decision)
    x = features.values[rows[picked]]
    predicted = ours.predicted[picked]
    classifier = PyTorchClassifier(
        model=wrapped,
        loss=nn.CrossEntropyLoss(),
        input_shape=(48, 19),
        nb_classes=2,
        clip_values=(0.0, 1.0),
        device_type="cpu",
    )
    ead = ElasticNet(
        classifier,
        targeted=False,
        binary_search_steps=settings.search_steps,
        max_iter=settings.max_iterations,
        initial_const=args.ead_initial_const,
        decision_rule="L1",
        batch_size=min(len(x), 256),
        verbose=False,
    )
    start = time.perf_counter()
    adversarial = ead.generate(x, y=np.eye(2, dtype=np.float32)[predicted])
    seconds = time.perf_counter() - start
    with torch.no_grad():
        after = wrapped(torch.from_numpy(adversarial.astype(np.float32))).argmax(1).numpy()
    flipped = after != predicted
    l0 = np.count_nonzero(np.abs(adversarial - x) > 1e-6, axis=(1, 2))[flipped]
    ours_l0 = ours.l0("sparse")[picked][ours.found[picked]]
    return {
        "samples": len(picked),
        "budget": settings.search_steps * settings.max_iterations,
        "ead": {
            "binary_search_steps": settings.search_steps,
            "max_iter": settings.max_iterations,
            "initial_const": args.ead_initial_const,
            "decision_rule": "L1",
            "success_rate": float(flipped.mean()),
            "median_l0": float(np.median(l0)) if l0.size else None,
            "seconds_per_sample": seconds / len(picked),
        },
        "ours": {
            "success_rate": float(ours.found[picked].mean()),
            "median_l0_sparse": float(np.median(ours_l0)) if ours_l0.size else None,
        },
    }


def demo_check(args: argparse.Namespace) -> dict[str, Any]:
    """`lstm-adv demo` with the shipped defaults: attacked = correct at the rule (with a cell), median L0."""
    workspace = Workspace((Path(args.home) / "demo").absolute())
    result = run_demo(workspace, load_config())
    attack = result.runs["attack"]
    summary = attack.summary_as(AttackSummary)
    stored = artifacts.load_attack_result(attack)
    correct = stored.predicted == stored.label
    return {
        "attack_run": str(attack.id),
        "decision": summary.decision,
        "threshold": summary.threshold,
        "cells": summary.cells,
        "samples": summary.n_samples,
        "correct_at_rule": int(correct.sum()),
        "attacked": summary.n_attacked,
        "no_cell": summary.n_no_cell,
        "every_correct_attacked": bool(np.array_equal(stored.attacked | (stored.skip == 2), correct)),
        "success_rate": summary.success_rate,
        "median_l0_sparse": summary.median_l0_sparse,
    }


def print_table(report: dict[str, Any]) -> None:
    print(
        f"\nSparse attack on a synthetic cohort of {report['admissions']:,} admissions (test split, "
        f"{report['device']}; model run {report['model_run']}, {report['decision']} t = {report['threshold']:.3f})"
    )
    head = f"{'cells':<9}{'attacked':>9}{'success':>9}{'med L0':>8}{'med L0 best':>12}{'measured':>10}{'s/sample':>10}"
    print(head + "   top-5 S_j in generator's top-5")
    for row in report["cells"]:
        measured = "-" if row["measured_share"] is None else f"{row['measured_share']:.1%}"
        print(
            f"{row['cells']:<9}{row['attacked']:>9}{row['success_rate']:>9.3f}{_num(row['median_l0_sparse']):>8}"
            f"{_num(row['median_l0_best']):>12}{measured:>10}{row['seconds_per_attacked_sample']:>10.3f}"
            f"   {row['top_in_informative']}/5 ({', '.join(row['top_features_sparse'])})"
        )
    print(f"generator's most informative: {', '.join(report['cells'][0]['informative_features'])}")
    print("targets: success ≥ 0.95, median L0 of sparse examples ≤ 20, observed: 100 % measured")
    ead = report.get("ead")
    if ead is None:
        print("\nEAD comparison skipped: install adversarial-robustness-toolbox (benchmark-only dependency).")
    else:
        print(f"\nvs ART ElasticNet (EAD), {ead['samples']} samples, {ead['budget']} iterations each, at the same rule")
        print(f"{'attack':<8}{'success':>9}{'median L0':>11}{'s/sample':>10}")
        print(
            f"{'ours':<8}{ead['ours']['success_rate']:>9.3f}{_num(ead['ours']['median_l0_sparse']):>11}"
            f"{report['cells'][0]['seconds_per_attacked_sample']:>10.3f}"
        )
        print(
            f"{'EAD':<8}{ead['ead']['success_rate']:>9.3f}{_num(ead['ead']['median_l0']):>11}"
            f"{ead['ead']['seconds_per_sample']:>10.3f}"
        )
        print("targets: our success ≥ EAD's, our median L0 ≤ 0.5 × EAD's")
    demo = report.get("demo")
    if demo is not None:
        print(
            f"\nlstm-adv demo: {demo['decision']} t = {demo['threshold']:.3f}, cells {demo['cells']}; "
            f"{demo['attacked']} of {demo['correct_at_rule']} correct at the rule attacked ({demo['no_cell']} without "
            f"a cell), every correct one attacked: {demo['every_correct_attacked']}; "
            f"success {demo['success_rate']:.3f}; "
            f"median L0 of sparse examples {_num(demo['median_l0_sparse'])} (target ≤ 30)"
        )


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", default=str(Path(__file__).parent / "results" / "sparse-home"))
    parser.add_argument("--admissions", type=int, default=20_000)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model-trials", type=int, default=0, help="tune-model trials (0: train the [model] defaults)")
    parser.add_argument("--attack-trials", type=int, default=0, help="tune-attack trials (0: tune_attack.trials)")
    parser.add_argument("--test-samples", type=int, default=0, help="attack the first N test samples (0: all)")
    parser.add_argument("--cells", nargs="+", default=["all", "observed"], choices=("all", "observed"))
    parser.add_argument("--ead-samples", type=int, default=256)
    parser.add_argument("--ead-initial-const", type=float, default=1.0)
    parser.add_argument("--skip-ead", action="store_true")
    parser.add_argument("--demo", action="store_true", help="also check `lstm-adv demo` on the MIMIC-III demo")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic cohort")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    base = load_config(
        overrides={
            "synth.admissions": args.admissions,
            "synth.seed": args.seed,
            "synth.schema": f"synthetic_{args.admissions}",
            "model.device": args.device,
            "attack.device": args.device,
        }
    )
    workspace = Workspace(Path(args.home).absolute())
    workspace.store.root.mkdir(parents=True, exist_ok=True)
    model_run = prepare_model(args, base, workspace)
    decision = artifacts.load_decision(model_run)
    report: dict[str, Any] = {
        "admissions": args.admissions,
        "device": args.device,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "model_run": str(model_run.id),
        "model_trials": args.model_trials,
        "test_auroc": model_run.manifest.summary.test["auroc"].value,
        "decision": decision.rule,
        "threshold": decision.threshold,
        "cells": [],
    }
    for cells in args.cells:
        figures, result, inputs = attack_cells(args, base, workspace.store, model_run, cells)
        report["cells"].append(figures)
        log(f"cells {cells}: success {figures['success_rate']:.3f}, median L0 {figures['median_l0_sparse']}")
        if cells == "all" and not args.skip_ead:
            report["ead"] = compare_ead(args, result, inputs)
    if args.demo:
        report["demo"] = demo_check(args)
    print_table(report)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2, default=str))
    print(f"\nwrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
