"""Benchmark of the sparsest attack at equal budget: the toolkit's methods against the strongest few-cell peers.

On a synthetic cohort (``--admissions``, default 3,000, seed ``--seed`` 7; made and reused in ``--home`` like
bench_sparse) the model (the [model] defaults, or ``--model-trials`` of tune-model) is attacked on the first
``--samples`` test samples it classifies correctly at its decision rule, under the threat ``--cells``
(``all``: every model-input cell, box [0, 1]; ``observed``; ``record``). ``--demo``: the same on the model
of ``lstm-adv demo`` (the MIMIC-III demo, in ``--home``/demo).

The toolkit: the tuned attack (tune-attack with ``--attack-trials`` on the same threat; its chosen method)
and each method named in ``--methods`` at the attack's defaults (``attack.max_iterations`` ×
``attack.search_steps``), every one with the swap search; ``ours (best of)`` is the per-sample smallest
of them (its passes are their sum).

The peers (benchmark-only, never imported by the toolkit; optional extra ``peers``): adv-lib's σ-zero
(Cinà et al. 2024; ``--steps`` steps), VFGA (Césaire et al. 2021; 10 samples per step, at most ``--steps``
iterations) and FMN-L0 (Pintor et al. 2021; ``--steps`` steps), and ART's ElasticNet (EAD; binary search
× iterations = ``--steps``). adv-lib imports torchvision and visdom at package level, which those attacks
do not use: where they are missing, stub modules stand in for them (nothing else is replaced; torch stays
the project's). Every peer attacks the model shifted by the rule's boundary (argmax = the rule) and every
example is re-evaluated at the rule; an L0 counts entries changed by more than 1e-6. Under ``observed``
and ``record`` the peers attack through a masked wrapper: their input's allowed entries (measured cells;
record entries) replace the sample's, everything else stays.

Prints per attack: success, median and mean L0, median L1, forward/backward passes per sample, CPU seconds
per sample, robust accuracy under L0 ≤ k (k = 1, 2, 4, 8, 16, 32), and per peer the samples where the
toolkit's best-of is smaller / equal / larger, and against the per-sample best of all peers. Names the
peers it could not import. Writes bench/results/peers.json.
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_sparse

from lstm_adv.attacks import L1Settings
from lstm_adv.domain.decision import DecisionRule
from lstm_adv.domain.perturbation import AttackBatchResult
from lstm_adv.pipeline import run_demo
from lstm_adv.results import artifacts
from lstm_adv.results.config_file import load_config
from lstm_adv.results.workspace import Workspace
from lstm_adv.targets import AttackSurface, attack_surface, l1_attack, resolve_target, tuned_settings
from lstm_adv.tune_attack import run_attack_tuning

RESULTS = Path(__file__).parent / "results" / "peers.json"
KS = (1, 2, 4, 8, 16, 32)
CHANGED = 1e-6


class Counted(nn.Module):
    """The model at its rule (z₁ shifted by the boundary, so argmax decides as the rule) counting passes."""

    def __init__(self, model: nn.Module, decision: DecisionRule, inputs: Callable[[Tensor], Tensor]) -> None:
        super().__init__()
        self.model, self.inputs = model, inputs
        self.register_buffer("shift", torch.tensor([0.0, -decision.boundary]))
        self.forward_passes = self.backward_passes = 0

    def forward(self, u: Tensor) -> Tensor:
        self.forward_passes += len(u)
        logits: Tensor = self.model(self.inputs(u)) + self.shift
        if logits.requires_grad:
            logits.register_hook(self._count_backward)
        return logits

    def _count_backward(self, grad: Tensor) -> Tensor:
        self.backward_passes += len(grad)
        return grad


@attrs.frozen
class Space:
    """What the peers perturb: a starting point u₀ in [0, 1], the map u → model input, and how to count L0."""

    start: np.ndarray  # (n, R, 19)
    inputs: Callable[[Tensor], Tensor]
    allowed: np.ndarray | None  # (n, R, 19) or None (every entry)


def space(surface: AttackSurface, rows: np.ndarray) -> Space:
    """The peers' search space under the threat (see the module docstring)."""
    x = surface.features.values[rows]
    if surface.cells == "all":
        return Space(x, lambda u: u, None)
    inputs = surface.inputs(rows)
    if surface.cells == "observed":
        allowed = inputs["allowed"]
        assert allowed is not None
        mask, base = torch.from_numpy(allowed), torch.from_numpy(x)
        return Space(x, lambda u: torch.where(mask.to(u.device), u, base.to(u.device)), allowed)
    record = inputs["record"]
    assert record is not None
    editable = surface.editable(rows)
    assert editable is not None
    start = np.clip(np.nan_to_num(record, nan=0.0), 0.0, 1.0).astype(np.float32)
    batch = surface.threat.batch(torch.from_numpy(x), _record_inputs(record))
    origin, allowed_t = torch.from_numpy(start), torch.from_numpy(editable)

    def through_fill(u: Tensor) -> Tensor:
        change = torch.where(allowed_t.to(u.device), u - origin.to(u.device), torch.zeros((), device=u.device))
        return batch.apply(change)

    return Space(start, through_fill, editable)


def _record_inputs(record: np.ndarray) -> Any:
    from lstm_adv.attacks import SampleInputs

    return SampleInputs(record=torch.from_numpy(record))


def peer_attacks(steps: int) -> tuple[dict[str, Callable[[nn.Module, Tensor, Tensor], Tensor]], list[str]]:
    """The peers that import, as ``attack(model, u, labels) → u_adv``, and the names of those that do not."""
    found: dict[str, Callable[[nn.Module, Tensor, Tensor], Tensor]] = {}
    missing: list[str] = []
    adv = _adv_lib()
    if adv is None:
        missing += ["adv-lib σ-zero", "adv-lib VFGA", "adv-lib FMN-L0"]
    else:
        found["σ-zero"] = lambda m, u, y: adv.sigma_zero(m, u, y, num_steps=steps)
        found["VFGA"] = lambda m, u, y: adv.vfga(m, u, y, targeted=False, max_iter=steps)
        found["FMN-L0"] = lambda m, u, y: adv.fmn(m, u, y, norm=0, steps=steps)
    ead = _ead(steps)
    if ead is None:
        missing.append("ART ElasticNet")
    else:
        found["EAD (ART)"] = ead
    return found, missing


def _adv_lib() -> Any:
    """adv-lib's attacks module, with stubs for the package-level imports those attacks do not use."""
    for name in ("torchvision", "torchvision.models", "torchvision.transforms", "visdom"):
        try:
            importlib.import_module(name)
        except ImportError:
            sys.modules[name] = _Stub(name)
            parent, _, child = name.rpartition(".")
            if parent:
                setattr(sys.modules[parent], child, sys.modules[name])
    try:
        return importlib.import_module("adv_lib.attacks")
    except ImportError:
        return None


class _Stub(types.ModuleType):
    """A stand-in module: any public attribute is an inert class (the attacks used never call them)."""

    def __getattr__(self, attribute: str) -> Any:
        if attribute.startswith("__"):
            raise AttributeError(attribute)
        return type(attribute, (), {"__init__": lambda self, *args, **kwargs: None})


def _ead(steps: int) -> Callable[[nn.Module, Tensor, Tensor], Tensor] | None:
    try:
        from art.attacks.evasion import ElasticNet
        from art.estimators.classification import PyTorchClassifier
    except ImportError:
        return None

    def run(model: nn.Module, u: Tensor, y: Tensor) -> Tensor:
        classifier = PyTorchClassifier(
            model=model,
            loss=nn.CrossEntropyLoss(),
            input_shape=tuple(u.shape[1:]),
            nb_classes=2,
            clip_values=(0.0, 1.0),
            device_type="cpu",
        )
        attack = ElasticNet(
            classifier, binary_search_steps=5, max_iter=steps // 5, decision_rule="L1", batch_size=256, verbose=False
        )
        out = attack.generate(u.numpy(), y=np.eye(2, dtype=np.float32)[y.numpy()])
        return torch.from_numpy(out.astype(np.float32))

    return run


def _scored(
    name: str, counted: Counted, u: Tensor, adversarial: Tensor, y: Tensor, where: Space, seconds: float
) -> dict[str, Any]:
    changed = (adversarial - u).abs() > CHANGED
    if where.allowed is not None:
        changed &= torch.from_numpy(where.allowed)
    with torch.no_grad():
        after = counted(adversarial).argmax(1)
    flipped = (after != y).numpy()
    l0 = np.where(flipped, changed.flatten(1).sum(1).numpy().astype(np.float64), np.inf)
    l1 = np.where(flipped, ((adversarial - u).abs() * changed).flatten(1).sum(1).numpy(), np.inf)
    return {"name": name, "l0": l0, "l1": l1, "seconds": seconds}


def ours(
    surface: AttackSurface,
    settings: L1Settings,
    model: nn.Module,
    decision: DecisionRule,
    rows: np.ndarray,
    config: Any,
) -> tuple[dict[str, Any], AttackBatchResult]:
    """The toolkit's attack with ``settings`` on the rows: L0 in the threat's unit, passes and seconds."""
    attack = l1_attack(
        model,
        settings,
        decision=decision,
        surface=surface,
        config=config,
        device=torch.device("cpu"),
        max_batch_size=len(rows),
    )
    start = time.perf_counter()
    result = surface.attack(attack, rows)
    seconds = time.perf_counter() - start
    found = result.found
    forward, backward = attack.passes.per_sample(int(result.attacked.sum()))
    return {
        "name": f"ours: {settings.method}",
        "l0": np.where(found, result.l0("sparse"), np.inf).astype(np.float64),
        "l1": np.where(found, result.l1("sparse"), np.inf),
        "seconds": seconds,
        "forward_passes": forward,
        "backward_passes": backward,
    }, result


def summary(entry: dict[str, Any], n: int) -> dict[str, Any]:
    """Success, L0 and L1 statistics, passes, seconds per sample and the robust-accuracy curve of one attack."""
    l0, l1 = entry["l0"], entry["l1"]
    found = np.isfinite(l0)
    return {
        "name": entry["name"],
        "success_rate": float(found.mean()),
        "median_l0": float(np.median(l0[found])) if found.any() else None,
        "mean_l0": float(l0[found].mean()) if found.any() else None,
        "median_l1": float(np.median(l1[found])) if found.any() else None,
        "forward_passes": entry.get("forward_passes"),
        "backward_passes": entry.get("backward_passes"),
        "seconds_per_sample": entry["seconds"] / n,
        "robust_accuracy": {str(k): float((l0 > k).mean()) for k in KS},
    }


def comparison(mine: np.ndarray, theirs: np.ndarray) -> dict[str, int]:
    """Samples where our L0 is smaller / equal / larger than theirs (a failure counts as an infinite L0)."""
    return {
        "smaller": int((mine < theirs).sum()),
        "equal": int((mine == theirs).sum()),
        "larger": int((mine > theirs).sum()),
    }


def prepare(args: argparse.Namespace) -> tuple[Any, Any, Any, Any]:
    """The model run, its features, its decision rule and the config (synthetic or the demo's)."""
    if args.demo:
        workspace = Workspace((Path(args.home) / "demo").absolute())
        config = load_config()
        model_run = run_demo(workspace, config).runs["model"]
        return workspace, model_run, config, "demo"
    config = load_config(
        overrides={
            "synth.admissions": args.admissions,
            "synth.seed": args.seed,
            "synth.schema": f"synthetic_{args.admissions}_{args.seed}",
            "model.device": "cpu",
            "attack.device": "cpu",
        }
    )
    workspace = Workspace(Path(args.home).absolute())
    workspace.store.root.mkdir(parents=True, exist_ok=True)
    return workspace, bench_sparse.prepare_model(args, config, workspace), config, f"synthetic {args.admissions:,}"


def main(argv: list[str]) -> int:
    args = parse(argv)
    torch.set_num_threads(args.threads)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    workspace, model_run, base, cohort = prepare(args)
    config = attrs.evolve(base, attack=attrs.evolve(base.attack, cells=args.cells, device="cpu"))
    store = workspace.store
    target = resolve_target(store, model_run)
    features = artifacts.load_features(target.features_run)
    model, decision = target.load(features, torch.device("cpu"))
    surface = attack_surface(config.attack, features, artifacts.feature_definitions(target.features_run).to_spec())
    rows = _correct_rows(model, decision, features, args.samples, "all" if args.demo else "test")
    predicted = decision.predict(_logits(model, features.values[rows]))
    trials = args.attack_trials or config.tune_attack.trials
    tuned = bench_sparse.reuse_or(
        store,
        "tune-attack",
        config,
        (model_run.id,),
        lambda: run_attack_tuning(store, model_run, config, trials=trials),
        match=lambda s: s is not None and s.n_trials == trials and s.cells == args.cells,
    )
    chosen = tuned_settings(tuned, config.attack)
    entries = []
    tuned_entry, _ = ours(surface, chosen, model, decision, rows, config.attack)
    tuned_entry["name"] = f"ours: tuned ({chosen.method})"
    entries.append(tuned_entry)
    for method in args.methods:
        if method == chosen.method:
            continue
        settings = attrs.evolve(chosen, method=method)
        entries.append(ours(surface, settings, model, decision, rows, config.attack)[0])
    best_of = {
        "name": "ours (best of)",
        "l0": np.min([e["l0"] for e in entries], axis=0),
        "l1": np.min([e["l1"] for e in entries], axis=0),
        "seconds": sum(e["seconds"] for e in entries),
        "forward_passes": sum(e["forward_passes"] for e in entries),
        "backward_passes": sum(e["backward_passes"] for e in entries),
    }
    entries.append(best_of)
    peers, missing = peer_attacks(args.steps)
    where = space(surface, rows)
    peer_entries = []
    for name, attack in peers.items():
        if args.cells != "all" and name not in ("σ-zero", "FMN-L0"):
            continue
        bench_sparse.log(f"peer {name}")
        peer_entries.append(_run_peer(name, attack, model, decision, where, predicted))
    report = _report(args, cohort, model_run, decision, rows, entries, peer_entries, missing, tuned)
    print_table(report)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    path = RESULTS.with_name(f"peers-{args.cells}{'-demo' if args.demo else ''}.json")
    path.write_text(json.dumps(report, indent=2, default=str))
    print(f"\nwrote {path}")
    return 0


def _run_peer(
    name: str,
    attack: Callable[[nn.Module, Tensor, Tensor], Tensor],
    model: nn.Module,
    decision: DecisionRule,
    where: Space,
    predicted: np.ndarray,
) -> dict[str, Any]:
    counted = Counted(model, decision, where.inputs)
    u, y = torch.from_numpy(where.start), torch.from_numpy(predicted)
    start = time.perf_counter()
    adversarial = attack(counted, u, y).detach()
    seconds = time.perf_counter() - start
    forward, backward = counted.forward_passes / len(u), counted.backward_passes / len(u)
    entry = _scored(name, counted, u, adversarial, y, where, seconds)
    return {**entry, "forward_passes": forward, "backward_passes": backward}


def _logits(model: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(np.ascontiguousarray(x))).numpy()


def _correct_rows(model: nn.Module, decision: DecisionRule, features: Any, n: int, split: str) -> np.ndarray:
    rows = features.indices(split)
    correct = decision.predict(_logits(model, features.values[rows])) == features.labels[rows]
    return rows[correct][:n]


def _report(
    args: argparse.Namespace,
    cohort: str,
    model_run: Any,
    decision: DecisionRule,
    rows: np.ndarray,
    entries: list[dict[str, Any]],
    peers: list[dict[str, Any]],
    missing: list[str],
    tuned: Any,
) -> dict[str, Any]:
    n = len(rows)
    mine = entries[-1]["l0"]
    best_peer = np.min([p["l0"] for p in peers], axis=0) if peers else None
    return {
        "cohort": cohort,
        "cells": args.cells,
        "samples": n,
        "model_run": str(model_run.id),
        "test_auroc": model_run.manifest.summary.test["auroc"].value,
        "threshold": decision.threshold,
        "tune_attack_run": str(tuned.id),
        "steps": args.steps,
        "threads": args.threads,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "versions": _versions(),
        "missing_peers": missing,
        "attacks": [summary(e, n) for e in [*entries, *peers]],
        "per_sample": {p["name"]: comparison(mine, p["l0"]) for p in peers}
        | ({"best of the peers": comparison(mine, best_peer)} if best_peer is not None else {}),
        # per sample (in the order of the attacked rows), each attack's L0 (null: no success)
        "l0_per_sample": {
            e["name"]: [None if not np.isfinite(v) else float(v) for v in e["l0"]] for e in [*entries, *peers]
        },
    }


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("adv-lib", "adversarial-robustness-toolbox"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


def print_table(report: dict[str, Any]) -> None:
    unit = "altered measurements" if report["cells"] == "record" else "changed cells"
    print(
        f"\nSparsest attack, {report['cohort']} model (test AUROC {report['test_auroc']:.3f}, t = "
        f"{report['threshold']:.3f}), {report['samples']} correctly classified samples, threat {report['cells']} "
        f"(L0 counts {unit}), peers at {report['steps']} steps"
    )
    ks = " ".join(f"{'≤' + str(k):>5}" for k in KS)
    print(
        f"{'attack':<24}{'success':>8}{'med L0':>8}{'mean L0':>8}{'med L1':>8}{'fwd/bwd':>12}{'s/sample':>9}"
        f"  robust acc at L0 {ks}"
    )
    for row in report["attacks"]:
        passes = f"{_num(row['forward_passes'], '.0f')}/{_num(row['backward_passes'], '.0f')}"
        curve = " ".join(f"{row['robust_accuracy'][str(k)]:>5.2f}" for k in KS)
        print(
            f"{row['name']:<24}{row['success_rate']:>8.3f}{_num(row['median_l0'], '.1f'):>8}"
            f"{_num(row['mean_l0'], '.1f'):>8}{_num(row['median_l1'], '.2f'):>8}{passes:>12}"
            f"{row['seconds_per_sample']:>9.3f}                   {curve}"
        )
    print("\nper sample, ours (best of) vs each peer: smaller / equal / larger L0 (a failure counts as infinite)")
    for name, counts in report["per_sample"].items():
        print(f"  {name:<22}{counts['smaller']:>5} / {counts['equal']:>5} / {counts['larger']:>5}")
    if report["missing_peers"]:
        print(f"not imported (install the extra `peers`): {', '.join(report['missing_peers'])}")
    print(f"versions: {report['versions']}")


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", default=str(Path(__file__).parent / "results" / "peers-home"))
    parser.add_argument("--admissions", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--model-trials", type=int, default=0)
    parser.add_argument("--attack-trials", type=int, default=0)
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--cells", default="all", choices=("all", "observed", "record"))
    parser.add_argument("--methods", nargs="+", default=["greedy", "ista"])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--demo", action="store_true")
    parser.add_argument("--device", default="cpu")
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
