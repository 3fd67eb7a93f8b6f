"""Robustness stage: fresh attacks against each model's final weights across an ε sweep.

For every model and every ε, PGD is run anew against that model's stored final weights on the
chosen split (default: test) — never with examples kept from training. Per (model, ε): clean and
robust accuracy, clean and robust recall of deaths (label 1), robust specificity, AUROC and AUPRC
under attack (score P(death) at x + δ), the attack's success rate among correctly classified
samples, mean ‖δ‖∞ / ‖δ‖₂, and the confusion matrix — all at the model's own threshold (max F1 on
validation, from its model run), so ε = 0 gives exactly the model run's clean test metrics. The
sparse L1 attack is also run against every model: its success rate and the mean L0 / L1 of its
best examples, before vs after defense.

Gradient-obfuscation check (as ART's security curve): per model, the sweep's PGD with a budget that
covers the whole box and ``robustness.obfuscation_iterations`` steps must drive robust accuracy to
about 0; a model where it does not is named in the summary (its evaluation may be unreliable:
masked or saturated gradients make a bounded attack look weak). The summary also stores every
feature's unit and scale (p5, p95), so reports give each ε in clinical units, ε · (p95 − p5).

``run_robustness`` writes a run of kind ``robustness`` (parents: the evaluated model runs) with
``curves.parquet`` (model, defense, eps, metric, value), ``confusion.parquet`` (model, defense, eps,
true_label, predicted_label, count), ``l1.parquet`` (model, defense, metric, value) and a summary.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import numpy as np
import pandas as pd
import torch
from numpy.typing import NDArray

from lstm_adv import metrics
from lstm_adv.attacks.l1 import L1Settings
from lstm_adv.attacks.pgd import PgdSettings
from lstm_adv.config import Config
from lstm_adv.domain.decision import DecisionRule
from lstm_adv.domain.errors import DataError
from lstm_adv.domain.feature_matrix import FeatureMatrix
from lstm_adv.domain.features import FeatureSpec
from lstm_adv.domain.perturbation import AttackBatchResult
from lstm_adv.domain.run_id import RunId
from lstm_adv.domain.shapes import N_CELLS
from lstm_adv.models import BiLSTM
from lstm_adv.results import artifacts
from lstm_adv.results.config_file import config_as_dict
from lstm_adv.results.store import Run, RunStore
from lstm_adv.results.summaries import EvaluatedModel as ModelEntry
from lstm_adv.results.summaries import (
    FeatureScale,
    L1Record,
    ModelSummary,
    ObfuscationCheck,
    PgdRecord,
    RobustnessRow,
    RobustnessSummary,
)
from lstm_adv.targets import (
    AttackSurface,
    attack_surface,
    check_model_run,
    features_run_of,
    pgd_attack,
    tuned_attack_of,
    tuned_settings,
)
from lstm_adv.targets import l1_attack as build_l1_attack
from lstm_adv.training_loop import predict_logits, probabilities, resolve_device
from lstm_adv.uncertainty import wilson_interval

log = logging.getLogger(__name__)

CURVE_METRICS = (
    "clean_accuracy",
    "robust_accuracy",
    "clean_recall",
    "robust_recall",
    "robust_specificity",
    "robust_auroc",
    "robust_auprc",
    "success_rate",
    "mean_linf",
    "mean_l2",
)

Progress = Callable[[str], None]
#: A budget that covers the whole box [0, 1]^(48×19): every input is reachable (the obfuscation check).
UNBOUNDED_EPS = {"linf": 1.0, "l2": math.sqrt(N_CELLS)}


@attrs.frozen
class EvaluatedModel:
    """One model under evaluation: its run id, what defense made it, the network and its decision rule."""

    run_id: str
    defense: str
    model: BiLSTM = attrs.field(eq=False)
    decision: DecisionRule

    @property
    def threshold(self) -> float:
        """The decision rule's threshold t on P(death)."""
        return self.decision.threshold

    @classmethod
    def from_run(cls, run: Run, *, device: str | torch.device) -> EvaluatedModel:
        """The final weights and decision rule stored in a model run (``defense``: baseline, static or adaptive)."""
        decision = artifacts.load_decision(run)
        return cls(str(run.id), defense_of(run), artifacts.load_trained_model(run, device=device), decision)


def defense_of(run: Run) -> str:
    """``baseline`` for a model of ``lstm-adv train``, else the defense: its method (static, adaptive, l1), or
    ``trades`` for adaptive training with the TRADES loss."""
    defense = run.summary_as(ModelSummary).defense
    if defense is None:
        return "baseline"
    return "trades" if defense.loss == "trades" else defense.method


def attacked_rows(y: torch.Tensor, settings: PgdSettings) -> torch.Tensor:
    """Rows an attack applies to: all (untargeted) or those not of the target class already. Shape: (n,) bool."""
    if settings.target is None:
        return torch.ones_like(y, dtype=torch.bool)
    return y != settings.target


def fresh_perturbation(
    model: BiLSTM,
    x: torch.Tensor,
    y: torch.Tensor,
    settings: PgdSettings,
    *,
    batch_size: int,
    decision: DecisionRule | None = None,
) -> torch.Tensor:
    """δ of a new PGD attack against ``model`` as it is now (targeted: rows of the target class keep δ = 0),
    its loss measured at the model's decision boundary.

    Shape: x (n, 48, 19) → (n, 48, 19), on x's device.
    """
    delta = torch.zeros_like(x)
    if settings.eps == 0.0:  # the clean evaluation: δ = 0 exactly, no attack needed
        return delta
    rows = attacked_rows(y, settings).nonzero()[:, 0]
    if rows.numel():
        attack = pgd_attack(
            model, settings, decision=decision or DecisionRule.argmax(), device=x.device, batch_size=batch_size
        )
        delta[rows] = attack.perturb(x[rows], y[rows])
    return delta


def curve_point(
    y: NDArray[np.int64],
    p_clean: NDArray[np.float64],
    p_adv: NDArray[np.float64],
    delta: torch.Tensor,
    threshold: float,
    pool: NDArray[np.bool_] | None = None,
) -> dict[str, float]:
    """The metrics of one (model, ε) from clean and attacked P(death). Shapes: (n,), δ (n, 48, 19).

    The success rate is taken over ``pool`` (default: the samples correct at the threshold), the
    samples the sparse L1 attack of the same run attacks.
    """
    clean, adv = p_clean >= threshold, p_adv >= threshold
    deaths, survivals = y == 1, y == 0
    correct = clean == (y == 1) if pool is None else pool
    flat = delta.flatten(1)
    return _with_intervals(y, p_adv, adv, correct, clean) | {
        "clean_accuracy": float(np.mean(correct)),
        "robust_accuracy": float(np.mean(adv == (y == 1))),
        "clean_recall": float(np.mean(clean[deaths])),
        "robust_recall": float(np.mean(adv[deaths])),
        "robust_specificity": float(np.mean(~adv[survivals])),
        "robust_auroc": metrics.auroc(y, p_adv),
        "robust_auprc": metrics.auprc(y, p_adv),
        "success_rate": float(np.mean(adv[correct] != clean[correct])) if correct.any() else 0.0,
        "mean_linf": float(flat.abs().amax(dim=1).mean()) if len(flat) else 0.0,
        "mean_l2": float(torch.linalg.vector_norm(flat, dim=1).mean()) if len(flat) else 0.0,
    }


#: The curve metrics that carry 95 % intervals (``<metric>_low``, ``<metric>_high`` rows): Wilson's for rates,
#: a percentile bootstrap over the samples for AUROC and AUPRC.
INTERVAL_METRICS = ("robust_accuracy", "robust_recall", "success_rate", "robust_auroc", "robust_auprc")


def _with_intervals(
    y: NDArray[np.int64],
    p_adv: NDArray[np.float64],
    adv: NDArray[np.bool_],
    correct: NDArray[np.bool_],
    clean: NDArray[np.bool_],
) -> dict[str, float]:
    """The 95 % intervals of the rates and ranking metrics of one (model, ε)."""
    deaths = y == 1
    counts = {
        "robust_accuracy": (int(np.sum(adv == deaths)), int(y.size)),
        "robust_recall": (int(np.sum(adv[deaths])), int(deaths.sum())),
        "success_rate": (int(np.sum(adv[correct] != clean[correct])), int(correct.sum())),
    }
    out: dict[str, float] = {}
    for name, (hits, trials) in counts.items():
        out[f"{name}_low"], out[f"{name}_high"] = wilson_interval(hits, trials)
    for name, (low, high) in metrics.ranking_intervals(y, p_adv).items():
        out[f"robust_{name}_low"], out[f"robust_{name}_high"] = low, high
    return out


def obfuscation_check(
    entry: EvaluatedModel,
    x: torch.Tensor,
    y: torch.Tensor,
    settings: PgdSettings,
    *,
    iterations: int,
    tolerance: float,
    batch_size: int,
    eval_batch_size: int,
    pool: NDArray[np.bool_] | None = None,
) -> ObfuscationCheck:
    """The gradient-obfuscation check of one model (as ART's security curve): the sweep's PGD, untargeted, with
    a budget that covers the whole box (L∞ ε = 1; L2 ε = √912) and ``iterations`` steps (α = 2.5·ε/iterations).

    Inside the box every input is allowed, so a gradient attack that works drives robust accuracy to
    about 0; where it stays above ``tolerance`` the gradients do not lead the attack (masked,
    saturated or shattered) and the bounded sweep may overstate the model's robustness. The success
    rate is taken over ``pool`` (default: the samples correct at the model's rule).
    Shape: x (n, 48, 19), y (n,).
    """
    unbounded = attrs.evolve(
        settings, eps=UNBOUNDED_EPS[settings.norm], iterations=iterations, target=None, step_size=None
    )
    delta = fresh_perturbation(entry.model, x, y, unbounded, batch_size=batch_size, decision=entry.decision)
    labels = y.cpu().numpy()
    p_clean = probabilities(predict_logits(entry.model, x, eval_batch_size))
    p_adv = probabilities(predict_logits(entry.model, x + delta, eval_batch_size))
    clean, adv = entry.decision.predict_probability(p_clean), entry.decision.predict_probability(p_adv)
    correct = clean == labels if pool is None else pool
    robust = float(np.mean(adv == labels))
    flipped = float(np.mean(adv[correct] != clean[correct])) if correct.any() else 0.0
    if robust > tolerance:
        log.warning(
            "model %s: unbounded PGD (%d steps) leaves robust accuracy %.3f > %.3f; gradients may be masked and "
            "its robustness evaluation may be unreliable",
            entry.run_id,
            iterations,
            robust,
            tolerance,
        )
    return ObfuscationCheck(
        eps=unbounded.eps,
        iterations=iterations,
        robust_accuracy=robust,
        success_rate=flipped,
        tolerance=tolerance,
        reliable=robust <= tolerance,
    )


def feature_scales(features: FeatureMatrix, spec: FeatureSpec) -> tuple[FeatureScale, ...]:
    """Each feature's unit and the features run's p5 / p95 (ε in clinical units is ε · (p95 − p5))."""
    units = {f.name: f.unit for f in spec.features}
    s = features.scaling
    return tuple(
        FeatureScale(feature=name, unit=units.get(name, ""), p5=float(p5), p95=float(p95))
        for name, p5, p95 in zip(s.feature_names, s.p5, s.p95, strict=True)
    )


def attack_pool(
    entry: EvaluatedModel, x: torch.Tensor, y: torch.Tensor, editable: NDArray[np.bool_] | None, *, eval_batch_size: int
) -> NDArray[np.bool_]:
    """The samples both attacks of a robustness run target: correct at the model's rule, with something the L1
    attack may change (``editable``: per sample, what its threat may change; None: anything). Shape: (n,) bool."""
    p_clean = probabilities(predict_logits(entry.model, x, eval_batch_size))
    pool: NDArray[np.bool_] = entry.decision.predict_probability(p_clean) == y.cpu().numpy()
    if editable is not None:
        pool &= editable.reshape(len(editable), -1).any(axis=1)
    return pool


def robustness_curve(
    entry: EvaluatedModel,
    x: torch.Tensor,
    y: torch.Tensor,
    settings: Sequence[PgdSettings],
    *,
    batch_size: int,
    eval_batch_size: int,
    pool: NDArray[np.bool_] | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Curve rows (model, defense, eps, metric, value) and confusion rows of one model over the sweep."""
    labels = y.cpu().numpy()
    p_clean = probabilities(predict_logits(entry.model, x, eval_batch_size))
    curves: list[dict[str, Any]] = []
    confusion: list[dict[str, Any]] = []
    for s in settings:
        delta = fresh_perturbation(entry.model, x, y, s, batch_size=batch_size, decision=entry.decision)
        p_adv = probabilities(predict_logits(entry.model, x + delta, eval_batch_size))
        point = curve_point(labels, p_clean, p_adv, delta, entry.threshold, pool)
        base = {"model": entry.run_id, "defense": entry.defense, "eps": s.eps}
        curves += [{**base, "metric": name, "value": value} for name, value in point.items()]
        matrix = metrics.confusion_matrix(labels, p_adv, entry.threshold)
        confusion += [
            {**base, "true_label": t, "predicted_label": p, "count": matrix[t][p]} for t in (0, 1) for p in (0, 1)
        ]
        log.info("model %s, eps %g: robust accuracy %.4f", entry.run_id, s.eps, point["robust_accuracy"])
    return curves, confusion


def l1_attack(
    entry: EvaluatedModel,
    surface: AttackSurface,
    rows: NDArray[np.int64],
    settings: L1Settings,
    config: Config,
    device: torch.device,
) -> tuple[AttackBatchResult, int]:
    """The tuned sparse L1 attack against one model at its decision rule on the features run's ``rows`` (the
    pool of :func:`attack_pool`), and the batch size it ran with ("auto": sized to the device)."""
    attack = build_l1_attack(
        entry.model,
        settings,
        decision=entry.decision,
        surface=surface,
        config=attrs.evolve(config.attack, include_misclassified=False),
        device=device,
        max_batch_size=len(rows),
    )
    return surface.attack(attack, rows), attack.batch_size


def l1_statistics(entry: EvaluatedModel, result: AttackBatchResult) -> list[dict[str, Any]]:
    """Success rate and sizes (median L0 of the sparse examples, mean L0 / L1 of the best) of the L1 attack."""
    found = result.found
    values = {
        "attacked": float(result.attacked.sum()),
        "success_rate": result.success_rate,
        "median_l0_sparse": float(np.median(result.l0("sparse")[found])) if found.any() else float("nan"),
        "mean_l0": float(result.l0("best")[found].mean()) if found.any() else float("nan"),
        "mean_l1": float(result.l1("best")[found].mean()) if found.any() else float("nan"),
    }
    return [{"model": entry.run_id, "defense": entry.defense, "metric": k, "value": v} for k, v in values.items()]


def evaluation_runs(store: RunStore, model_runs: Sequence[Run], *, include_original: bool) -> list[Run]:
    """The runs to evaluate: as given (duplicates dropped), each defended one preceded by its original."""
    chosen: dict[str, Run] = {}
    for run in model_runs:
        check_model_run(run)
        defense = run.summary_as(ModelSummary).defense
        if include_original and defense is not None:
            original = store.get(str(defense.original_model), kind="model")
            chosen.setdefault(str(original.id), original)
        chosen.setdefault(str(run.id), run)
    return list(chosen.values())


def _common_features(store: RunStore, runs: Sequence[Run]) -> Run:
    features = {str(run.id): features_run_of(store, run) for run in runs}
    ids = {str(f.id) for f in features.values()}
    if len(ids) > 1:
        listing = ", ".join(f"{model} ← {f.id}" for model, f in features.items())
        raise DataError(
            f"robustness compares models on one test split, but they come from different features runs "
            f"({listing}); give models trained on the same features run"
        )
    return next(iter(features.values()))


def run_robustness(
    store: RunStore,
    model_runs: Sequence[Run],
    config: Config,
    *,
    tuned: Run | None = None,
    progress: Progress | None = None,
) -> Run:
    """Fresh PGD (and the tuned sparse L1) attacks against every model's final weights; writes a robustness run.

    The L1 attack uses ``tuned`` (a tune-attack run) or else the newest tune-attack run of the first
    (original) model, never untuned defaults; ``robustness.l1_max_iterations = 0`` skips it. Bad input
    (negative ε, unknown norm, a run that is not a single model, no tuned attack) writes no run.
    """
    sweep = config.robustness.sweep
    runs = evaluation_runs(store, model_runs, include_original=config.robustness.include_original)
    if not runs:
        raise DataError("robustness needs at least one model run; give --model <id>")
    features_run = _common_features(store, runs)
    features = artifacts.load_features(features_run)
    device = resolve_device(config.model.device)
    rows = features.indices(config.robustness.split)
    x, y = _split_tensors(features, config.robustness.split, device)
    settings = [PgdSettings.from_config(config.pgd, attack=config.robustness.attack, eps=e) for e in sweep]
    l1, tuned = _l1_settings(store, runs[0], config, tuned)
    spec = artifacts.feature_definitions(features_run).to_spec()
    surface = attack_surface(config.attack, features, spec) if l1 is not None else None
    parents = [run.id for run in runs] + ([tuned.id] if tuned is not None else [])
    with store.create("robustness", parents=parents, config=config_as_dict(config)) as writer:
        tables = _Tables()
        for run in runs:
            entry = EvaluatedModel.from_run(run, device=device)
            _evaluate(tables, entry, x, y, settings, config, l1=l1, surface=surface, rows=rows, progress=progress)
        frames = (pd.DataFrame(tables.curves), pd.DataFrame(tables.confusion), _l1_frame(tables.l1))
        names = (artifacts.ROBUSTNESS_CURVES_FILE, artifacts.CONFUSION_FILE, artifacts.L1_FILE)
        for frame, name in zip(frames, names, strict=True):
            artifacts.write_table(writer.file(name), frame)
        summary = _summary(
            frames, runs, features_run, config, settings[0], l1, len(x), tuned, tables.pools, tables.l1_batches
        )
        writer.summary = attrs.evolve(summary, scales=feature_scales(features, spec), obfuscation=tables.obfuscation)
    assert writer.committed is not None
    return writer.committed


@attrs.define
class _Tables:
    """What a robustness run collects over its models: table rows, pool sizes, obfuscation checks and the L1
    attack's batch sizes."""

    curves: list[dict[str, Any]] = attrs.Factory(list)
    confusion: list[dict[str, Any]] = attrs.Factory(list)
    l1: list[dict[str, Any]] = attrs.Factory(list)
    pools: dict[str, int] = attrs.Factory(dict)
    obfuscation: dict[str, ObfuscationCheck] = attrs.Factory(dict)
    l1_batches: dict[str, int] = attrs.Factory(dict)


def _evaluate(
    tables: _Tables,
    entry: EvaluatedModel,
    x: torch.Tensor,
    y: torch.Tensor,
    settings: Sequence[PgdSettings],
    config: Config,
    *,
    l1: L1Settings | None,
    surface: AttackSurface | None,
    rows: NDArray[np.int64],
    progress: Progress | None,
) -> None:
    """One model: its pool, the PGD sweep, the obfuscation check and the L1 attack, into ``tables``."""
    say = progress or (lambda text: None)
    batch_size, eval_batch_size = config.pgd.batch_size, config.model.eval_batch_size
    editable = None if surface is None else surface.editable(rows)
    pool = attack_pool(entry, x, y, editable, eval_batch_size=eval_batch_size)
    tables.pools[entry.run_id] = int(pool.sum())
    say(f"PGD sweep on {entry.run_id}")
    c, m = robustness_curve(entry, x, y, settings, batch_size=batch_size, eval_batch_size=eval_batch_size, pool=pool)
    tables.curves += c
    tables.confusion += m
    r = config.robustness
    if r.obfuscation_iterations > 0:
        say(f"obfuscation check on {entry.run_id}")
        tables.obfuscation[entry.run_id] = obfuscation_check(
            entry,
            x,
            y,
            settings[-1],
            iterations=r.obfuscation_iterations,
            tolerance=r.obfuscation_tolerance,
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            pool=pool,
        )
    if l1 is not None and surface is not None:
        say(f"L1 attack on {entry.run_id}")
        result, tables.l1_batches[entry.run_id] = l1_attack(entry, surface, rows, l1, config, x.device)
        tables.l1 += l1_statistics(entry, result)


def _l1_settings(
    store: RunStore, original: Run, config: Config, tuned: Run | None
) -> tuple[L1Settings | None, Run | None]:
    """The tuned L1 attack settings (``robustness.l1_max_iterations`` per round), or None when skipped."""
    if config.robustness.l1_max_iterations == 0:
        return None, None
    tuned = tuned or tuned_attack_of(store, original)
    if tuned is None:
        raise DataError(
            f"no tune-attack run was tuned against model run {original.id}; run `lstm-adv tune-attack --model "
            f"{original.id}` first, give one with --tuned, or skip the L1 attack with --l1-iterations 0"
        )
    settings = tuned_settings(tuned, config.attack)
    return attrs.evolve(settings, max_iterations=config.robustness.l1_max_iterations), tuned


def _split_tensors(features: FeatureMatrix, split: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    idx = features.indices(split)
    counts = np.bincount(features.labels[idx], minlength=2)
    if counts.min() == 0:
        raise DataError(
            f"robustness: the {split} split holds {counts[0]} survivals and {counts[1]} deaths; AUROC "
            "needs both classes; choose another split or rebuild the features"
        )
    x = torch.from_numpy(np.ascontiguousarray(features.values[idx])).to(device)
    return x, torch.from_numpy(features.labels[idx]).to(device)


def _l1_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["model", "defense", "metric", "value"])


def _summary(
    frames: tuple[pd.DataFrame, ...],
    runs: Sequence[Run],
    features_run: Run,
    config: Config,
    settings: PgdSettings,
    l1: L1Settings | None,
    n: int,
    tuned: Run | None,
    pools: dict[str, int],
    l1_batches: dict[str, int],
) -> RobustnessSummary:
    curves, _confusion, l1_frame = frames
    table = curves.pivot_table(index=["model", "eps"], columns="metric", values="value").reset_index()
    ids = {str(r.id): r.id for r in runs}
    rows = tuple(_row(ids[str(row["model"])], {str(k): v for k, v in row.items()}) for row in table.to_dict("records"))
    by_model = {
        str(m): {str(k): _finite(v) for k, v in zip(g["metric"], g["value"], strict=True)}
        for m, g in l1_frame.groupby("model")
    }
    return RobustnessSummary(
        models=tuple(ModelEntry(model=r.id, defense=defense_of(r)) for r in runs),
        features_run=features_run.id,
        split=config.robustness.split,
        n=n,
        attack=config.robustness.attack,
        eps=tuple(sorted(set(curves["eps"].tolist()))),
        pgd=PgdRecord(
            step_size=settings.step_size,
            iterations=settings.iterations,
            norm=settings.norm,
            target=settings.target,
            random_start=settings.random_start,
            loss=settings.loss,
            seed=settings.seed,
            batch_size=config.pgd.batch_size,
        ),
        table=rows,
        l1=L1Record(
            settings={} if l1 is None else attrs.asdict(l1),
            by_model=by_model,
            tuned=None if tuned is None else tuned.id,
            batch_size=l1_batches,
        ),
        decisions={str(r.id): _rule_text(r) for r in runs},
        cells=config.attack.cells,
        pool=pools,
    )


def _rule_text(run: Run) -> str:
    return artifacts.load_decision(run).describe()


def _row(model: RunId, row: dict[str, Any]) -> RobustnessRow:
    value = {m: _finite(row[m]) if m in row else None for m in CURVE_METRICS}
    intervals = {}
    for name in INTERVAL_METRICS:
        low, high = (_finite(row.get(f"{name}_{end}")) for end in ("low", "high"))
        if low is not None and high is not None:
            intervals[name] = (low, high)
    return RobustnessRow(
        model=model,
        eps=float(row["eps"]),
        clean_accuracy=value["clean_accuracy"],
        robust_accuracy=value["robust_accuracy"],
        clean_recall=value["clean_recall"],
        robust_recall=value["robust_recall"],
        robust_specificity=value["robust_specificity"],
        robust_auroc=value["robust_auroc"],
        robust_auprc=value["robust_auprc"],
        success_rate=value["success_rate"],
        mean_linf=value["mean_linf"],
        mean_l2=value["mean_l2"],
        intervals=intervals,
    )


def _finite(value: Any) -> float | None:
    return float(value) if value is not None and math.isfinite(float(value)) else None
