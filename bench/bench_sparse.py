"""Benchmark of the sparse attack's science under the three threats: record, observed and all.

On a synthetic cohort (default 20,000 admissions, made in the embedded PostgreSQL of ``--home``):
synth → query → preprocess → a model (``--model-trials`` N > 0: tune-model with N trials, then train
with the best trial; 0: train with the [model] defaults) → for each threat (``record``: altered
measurements pushed through the fill, the data-entry error; ``observed``: measured model-input cells
alone; ``all``: every cell, Sun et al.) tune-attack (``--attack-trials``, default ``tune_attack.trials``)
→ the tuned attack on the same test samples (the first ``--test-samples``; all by default). Every
stage's run is kept in ``--home`` and reused by the next invocation when its settings are unchanged.

Reported per threat: success rate at the model's decision rule with its 95 % bootstrap interval,
median L0 in the threat's unit (altered measurements for ``record``, changed cells otherwise) and
median model-input cells changed, leverage (input cells per altered unit), the iteration's cost ÷ one
forward+backward (the tuned method's loop alone, ``--ratio-threads`` threads), seconds per attacked
sample, for ``record`` the share of stored examples that still flip when their record change is pushed
through the numpy fill (the reference), and for each ranking — S_j = Σ_i GMP_ij·GPP_ij on the model
input's change, and the per-opportunity rate (altered ÷ available measurements; for the cell threats
changed ÷ allowed cells) — Spearman ρ (bootstrap interval over examples) and top-5 overlap against two
truths: the generator's per-measurement informativeness |load| / √(1 + noise²) and a per-sample one
(|AUROC − ½| of each feature's per-sample mean input against the label on the test split); plus the
same ρ on two disjoint halves of the samples and between the halves (stability).

Targets (issue 19): record: success ≥ 0.95 at a median of ≤ 10 altered measurements, every stored
example re-flips through the numpy fill, iteration ÷ fwd+bwd ≤ 1.15 (CPU, 1 thread).

Side by side (``all``, the same model and samples): ART's ElasticNet (EAD, benchmark-only; skipped when
not installed), as before. ``--demo`` also runs ``lstm-adv demo`` on the shipped MIMIC-III demo.

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
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_attack
from scipy.stats import spearmanr

from lstm_adv import metrics, uncertainty
from lstm_adv.attacks import L1Attack, SampleInputs
from lstm_adv.config import Config
from lstm_adv.database.server import ensure_server
from lstm_adv.domain.decision import DecisionRule
from lstm_adv.domain.perturbation import AttackBatchResult
from lstm_adv.domain.record import fill_record
from lstm_adv.measurements import susceptibility_resamples
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
from lstm_adv.targets import AttackSurface, attack_surface, l1_attack, resolve_target, tuned_settings
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
    """Tune the attack on threat ``cells`` and run it on the test samples; the figures, the result and its inputs."""
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
    surface = attack_surface(config.attack, features, spec)
    attack = l1_attack(
        model,
        settings,
        decision=decision,
        surface=surface,
        config=config.attack,
        device=device,
        max_batch_size=len(rows),
    )
    start = time.perf_counter()
    result = surface.attack(attack, rows)
    seconds = time.perf_counter() - start
    found = result.found
    names = [f.name for f in spec.features]
    l0, cells_moved = result.l0("sparse")[found], result.input_l0("sparse")[found]
    success = uncertainty.rate_estimate(int(found.sum()), int(result.attacked.sum()))
    figures: dict[str, Any] = {
        "cells": cells,
        "unit": result.unit,
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
        "success_interval": [success.low, success.high],
        "median_l0_sparse": float(np.median(l0)) if l0.size else None,
        "mean_l0_sparse": float(l0.mean()) if l0.size else None,
        "median_input_cells_sparse": float(np.median(cells_moved)) if l0.size else None,
        "leverage": float(np.median(cells_moved / np.maximum(l0, 1))) if l0.size else None,
        "median_l0_best": float(np.median(result.l0("best")[found])) if l0.size else None,
        "seconds": seconds,
        "seconds_per_attacked_sample": seconds / max(int(result.attacked.sum()), 1),
        "reflip_share": reflip_share(model, decision, features, result) if result.record_space else None,
        "cost_ratio": cost_ratio(args, model, attack, surface, rows, device),
        "rankings": rankings(args, result, surface, rows, names),
    }
    return figures, result, (model, decision, features, rows, settings)


def reflip_share(model: nn.Module, decision: DecisionRule, features: Any, result: AttackBatchResult) -> float | None:
    """Share of the record examples (sparse) that flip again when their record change is pushed through the
    numpy fill (the reference path), evaluated afresh in one batch."""
    found = np.flatnonzero(result.found)
    if found.size == 0:
        return None
    record = features.record_values()[result.sample_index[found]]
    altered = np.where(np.isnan(record), np.nan, np.nan_to_num(record) + result.sparse_record_delta[found])
    inputs = fill_record(altered, features.scaling.scaled_median).astype(np.float32)
    device = next(model.parameters()).device
    with torch.no_grad():
        logits = model(torch.from_numpy(inputs).to(device)).cpu().numpy()
    after = decision.predict(logits)
    return float(np.mean(after != result.predicted[found]))


def cost_ratio(
    args: argparse.Namespace, model: nn.Module, attack: L1Attack, surface: AttackSurface, rows: np.ndarray, device: Any
) -> dict[str, float]:
    """The proximal iteration loop (ista, the tuned λ and step) ÷ one forward+backward on a batch of these samples,
    through this threat (median of ``--ratio-repeats`` interleaved runs, ``--ratio-threads`` CPU threads)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(args.ratio_threads)
    try:
        batch = rows[: args.ratio_batch]
        x = torch.from_numpy(surface.features.values[batch]).to(device)
        arrays = surface.inputs(batch)
        inputs = SampleInputs(**{k: None if v is None else torch.from_numpy(v).to(device) for k, v in arrays.items()})
        # the threat's cost per iteration, measured on the proximal loop (ista) whatever method was tuned
        short, long = (
            attrs.evolve(attack.settings, method="ista", max_iterations=k, search_steps=1)
            for k in (args.ratio_iterations // 4, args.ratio_iterations)
        )
        k1, k2 = short.max_iterations, long.max_iterations
        loops = []
        for settings in (short, long):
            copy = l1_attack(
                model,
                settings,
                decision=attack.decision,
                surface=surface,
                config=attrs.evolve(load_config().attack, batch_size=len(batch)),
                device=device,
                max_batch_size=len(batch),
            )
            loops.append(bench_attack.iteration_loop(copy, x, inputs))
        base = bench_attack.forward_backward(model, x, k2 - k1, device)
        base()
        fb, loop = [], []
        for _ in range(args.ratio_repeats):
            fb.append(bench_attack._timed(base, device) / (k2 - k1))
            loop.append((bench_attack._timed(loops[1], device) - bench_attack._timed(loops[0], device)) / (k2 - k1))
        median_fb, median_loop = float(np.median(fb)), float(np.median(loop))
        return {
            "batch": len(batch),
            "threads": args.ratio_threads,
            "forward_backward_ms": median_fb * 1e3,
            "iteration_ms": median_loop * 1e3,
            "ratio": median_loop / median_fb,
        }
    finally:
        torch.set_num_threads(threads)


def truths(features: Any, names: list[str]) -> dict[str, np.ndarray]:
    """Two truths of each feature's informativeness: the generator's per measurement, |load| / √(1 + noise²),
    and a per-sample one, |AUROC − ½| of each feature's per-sample mean input against the label (test split)."""
    by_name = {p.name: abs(p.load) / float(np.sqrt(1.0 + p.noise**2)) for p in PHYSIOLOGY}
    test = features.indices("test")
    means = features.values[test].mean(axis=1)
    labels = features.labels[test]
    per_sample = np.array([abs(metrics.auroc(labels, means[:, j]) - 0.5) for j in range(len(names))])
    return {"generator": np.array([by_name[n] for n in names]), "per_sample": per_sample}


def _scores(
    kind: str, result: AttackBatchResult, surface: AttackSurface, rows: np.ndarray, counts: np.ndarray
) -> np.ndarray:
    """Per resample (``counts`` over the successful examples), the ranking's score of every feature. Shape: (B, 19)."""
    found = result.found
    if kind == "S_j":
        return susceptibility_resamples(result.deltas("sparse")[found], counts)
    changed = np.count_nonzero(result.variables("sparse")[found], axis=1).astype(np.float64)  # (n, 19)
    editable = surface.editable(rows[found])
    available = (
        np.full(changed.shape, float(result.deltas("sparse").shape[1])) if editable is None else editable.sum(axis=1)
    ).astype(np.float64)
    return np.divide(
        counts @ changed,
        counts @ available,
        out=np.zeros((counts.shape[0], changed.shape[1])),
        where=(counts @ available) > 0,
    )


def rankings(
    args: argparse.Namespace, result: AttackBatchResult, surface: AttackSurface, rows: np.ndarray, names: list[str]
) -> dict[str, Any]:
    """Spearman ρ (with a bootstrap interval over examples) and top-5 overlap of S_j and of the per-opportunity
    rate against both truths, on all examples and on two disjoint halves, and between the halves."""
    n = int(result.found.sum())
    if n < 4:
        return {}
    truth = truths(surface.features, names)
    out: dict[str, Any] = {}
    point = np.ones((1, n), dtype=np.int64)
    boot = uncertainty.resample_counts(n, args.bootstrap, 0)
    half = np.zeros((2, n), dtype=np.int64)
    order = np.random.default_rng(1).permutation(n)
    half[0, order[: n // 2]], half[1, order[n // 2 :]] = 1, 1
    for kind in ("S_j", "per_opportunity"):
        score = _scores(kind, result, surface, rows, point)[0]
        resampled = _scores(kind, result, surface, rows, boot)
        halves = _scores(kind, result, surface, rows, half)
        entry: dict[str, Any] = {"top5": [names[j] for j in np.argsort(-score, kind="stable")[:TOP]]}
        for name, values in truth.items():
            rhos = np.array([_rho(r, values) for r in resampled])
            low, high = uncertainty.percentile_interval(rhos[:, None])
            entry[name] = {
                "rho": _rho(score, values),
                "rho_interval": [float(low[0]), float(high[0])],
                "top5_overlap": len(_top(score) & _top(values)),
                "rho_halves": [_rho(h, values) for h in halves],
            }
        entry["rho_between_halves"] = _rho(halves[0], halves[1])
        out[kind] = entry
    return out


def _top(scores: np.ndarray) -> set[int]:
    return set(np.argsort(-scores, kind="stable")[:TOP].tolist())


def _rho(a: np.ndarray, b: np.ndarray) -> float:
    value = spearmanr(a, b).statistic
    return float(value) if np.isfinite(value) else float("nan")


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
        f"{report['device']}; model run {report['model_run']}, test AUROC {report['test_auroc']:.3f}, "
        f"{report['decision']} t = {report['threshold']:.3f})"
    )
    head = (
        f"{'threat':<9}{'attacked':>9}{'success [95 % CI]':>24}{'med L0':>8}{'unit':>13}{'med cells':>10}"
        f"{'leverage':>9}{'it/fb':>7}{'re-flip':>8}{'s/sample':>9}"
    )
    print(head)
    for row in report["cells"]:
        low, high = row["success_interval"]
        success = f"{row['success_rate']:.3f} [{low:.3f}, {high:.3f}]" if low is not None else "-"
        reflip = "-" if row["reflip_share"] is None else f"{row['reflip_share']:.3f}"
        unit = "measurements" if row["unit"] == "measurement" else "cells"
        print(
            f"{row['cells']:<9}{row['attacked']:>9}{success:>24}{_num(row['median_l0_sparse']):>8}{unit:>13}"
            f"{_num(row['median_input_cells_sparse']):>10}{_num(row['leverage']):>9}{row['cost_ratio']['ratio']:>7.2f}"
            f"{reflip:>8}{row['seconds_per_attacked_sample']:>9.3f}"
        )
    print(
        "\nrankings (sparse examples): Spearman ρ [95 % CI] vs each truth, top-5 overlap, ρ on two halves; "
        "ρ between halves"
    )
    for row in report["cells"]:
        for kind, entry in row["rankings"].items():
            parts = []
            for truth in ("generator", "per_sample"):
                t = entry[truth]
                halves = ", ".join(f"{r:.2f}" for r in t["rho_halves"])
                parts.append(
                    f"{truth} ρ {t['rho']:.2f} [{t['rho_interval'][0]:.2f}, {t['rho_interval'][1]:.2f}] "
                    f"top-5 {t['top5_overlap']}/5 halves ({halves})"
                )
            print(f"{row['cells']:<9}{kind:<16}" + "; ".join(parts) + f"; halves ρ {entry['rho_between_halves']:.2f}")
            print(f"{'':<25}top 5: {', '.join(entry['top5'])}")
    print("targets (record): success ≥ 0.95 at median ≤ 10 altered measurements, re-flip 1.000, it/fb ≤ 1.15")
    ead = report.get("ead")
    if ead is None:
        print("\nEAD comparison skipped: install adversarial-robustness-toolbox (benchmark-only dependency).")
    else:
        print(f"\nvs ART ElasticNet (EAD), {ead['samples']} samples, {ead['budget']} iterations each, at the same rule")
        print(f"{'attack':<8}{'success':>9}{'median L0':>11}{'s/sample':>10}")
        print(f"{'ours':<8}{ead['ours']['success_rate']:>9.3f}{_num(ead['ours']['median_l0_sparse']):>11}")
        print(
            f"{'EAD':<8}{ead['ead']['success_rate']:>9.3f}{_num(ead['ead']['median_l0']):>11}"
            f"{ead['ead']['seconds_per_sample']:>10.3f}"
        )
    demo = report.get("demo")
    if demo is not None:
        print(
            f"\nlstm-adv demo: {demo['decision']} t = {demo['threshold']:.3f}, threat {demo['cells']}; "
            f"{demo['attacked']} of {demo['correct_at_rule']} correct at the rule attacked ({demo['no_cell']} with "
            f"nothing to change), every correct one attacked: {demo['every_correct_attacked']}; "
            f"success {demo['success_rate']:.3f}; median L0 of sparse examples {_num(demo['median_l0_sparse'])}"
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
    parser.add_argument(
        "--cells", nargs="+", default=["record", "observed", "all"], choices=("record", "observed", "all")
    )
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples of the rankings' ρ")
    parser.add_argument("--ratio-batch", type=int, default=128, help="samples in the cost-ratio batch")
    parser.add_argument("--ratio-iterations", type=int, default=40, help="iterations of the longer timed loop")
    parser.add_argument("--ratio-repeats", type=int, default=5)
    parser.add_argument("--ratio-threads", type=int, default=1)
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
