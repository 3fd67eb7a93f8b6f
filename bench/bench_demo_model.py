"""What can a model learn from the MIMIC-III demo's 68 samples? Repeated K-fold cross-validation of training settings.

The demo's held-out splits (8 validation and 9 test samples) cannot rank training settings: one sample moves their
AUROC by 0.05–0.2. This benchmark pools the out-of-fold predictions of the features run's K folds (train, validate on
the next fold, score the held-out fold; test samples unused), repeated over ``--seeds`` training seeds, for a few
BiLSTM settings (the shipped ``[model]`` defaults first), and compares them with a ceiling reference: an
L2-regularised logistic regression on each feature's mean, last, minimum and maximum, on the same folds.
It prints, per setting, the pooled out-of-fold AUROC (mean ± sd over seeds), the median interquartile range of the
held-out P(death) and the median best epoch, and writes bench/results/demo_model.json.

Without ``--home`` it builds the demo features in a temporary home first (embedded PostgreSQL, shipped demo).
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from lstm_adv.results import artifacts
from lstm_adv.results.config_file import load_config
from lstm_adv.results.store import RunStore
from lstm_adv.train import SplitIndices, params_from_config, train_model

RESULTS = Path(__file__).parent / "results" / "demo_model.json"
#: Training settings tried, as changes to the shipped [model] section.
SETTINGS: dict[str, dict[str, Any]] = {
    "shipped [model] defaults": {},
    "monitor loss, patience 15": {"monitor": "loss", "patience": 15, "max_epochs": 100},
    "hidden 16, lr 3e-3, monitor loss": {
        "hidden_size": 16,
        "fc_size": 16,
        "learning_rate": 3e-3,
        "monitor": "loss",
        "patience": 15,
        "max_epochs": 100,
    },
    "hidden 16, dropout 0.5, monitor loss": {
        "hidden_size": 16,
        "fc_size": 16,
        "learning_rate": 3e-3,
        "dropout": 0.5,
        "monitor": "loss",
        "patience": 15,
        "max_epochs": 100,
    },
    "hidden 16, no weighted sampling": {
        "hidden_size": 16,
        "fc_size": 16,
        "learning_rate": 3e-3,
        "imbalance": "none",
        "monitor": "loss",
        "patience": 15,
        "max_epochs": 100,
    },
    "hidden 8, lr 3e-3, monitor loss": {
        "hidden_size": 8,
        "fc_size": 8,
        "learning_rate": 3e-3,
        "monitor": "loss",
        "patience": 20,
        "max_epochs": 150,
    },
}


def demo_home(folder: Path) -> Path:
    """A home holding the demo's features run, made with the CLI's shipped defaults."""
    cli = [str(Path(sys.executable).with_name("lstm-adv")), "--home", str(folder)]
    try:
        for step in (["db", "start"], ["db", "load-demo"], ["query"], ["preprocess"]):
            subprocess.run([*cli, *step], check=True, capture_output=True)
    finally:
        subprocess.run([*cli, "db", "stop"], check=False, capture_output=True)
    return folder


def cross_validate(features: Any, changes: dict[str, Any], seeds: int) -> dict[str, Any]:
    """Pooled out-of-fold AUROC of one setting per seed, the held-out spread and the best epochs."""
    config = attrs.evolve(load_config().model, **changes)
    params = params_from_config(config)
    aurocs, spreads, epochs = [], [], []
    for seed in range(seeds):
        labels, probabilities = [], []
        for k in range(features.n_folds):
            trained = train_model(
                features, params, attrs.evolve(config, seed=seed), split=SplitIndices.fold(features, k)
            )
            held_out = np.asarray(trained.predictions.test)
            labels.append(features.labels[trained.predictions.test_index])
            probabilities.append(held_out)
            spreads.append(float(np.subtract(*np.percentile(held_out, [75, 25]))))
            epochs.append(trained.best_epoch)
        aurocs.append(float(roc_auc_score(np.concatenate(labels), np.concatenate(probabilities))))
    return {
        "auroc_per_seed": aurocs,
        "auroc_mean": float(np.mean(aurocs)),
        "auroc_sd": float(np.std(aurocs)),
        "iqr_median": float(np.median(spreads)),
        "best_epoch_median": float(np.median(epochs)),
    }


def logistic_reference(features: Any) -> dict[str, Any]:
    """The reference: logistic regression (C = 0.1) on per-feature mean/last/min/max, trained on the same folds'
    training parts (the validation part unused) and scored on the same held-out folds."""
    values = features.values
    summary = np.concatenate([values.mean(1), values[:, -1], values.min(1), values.max(1)], axis=1)
    labels, probabilities = [], []
    for k in range(features.n_folds):
        split = SplitIndices.fold(features, k)
        model = LogisticRegression(C=0.1, max_iter=2000).fit(summary[split.train], features.labels[split.train])
        probabilities.append(model.predict_proba(summary[split.evaluation])[:, 1])
        labels.append(features.labels[split.evaluation])
    return {"auroc": float(roc_auc_score(np.concatenate(labels), np.concatenate(probabilities)))}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", type=Path, help="a home with the demo's features run (default: build one)")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args, _ = parser.parse_known_args(argv)
    torch.set_num_threads(args.threads)
    logging.getLogger("lstm_adv").setLevel(logging.ERROR)  # every fold's model is weak here: no warning per fold
    with tempfile.TemporaryDirectory() as scratch:
        home = args.home or demo_home(Path(scratch) / "home")
        features = artifacts.load_features(RunStore(home / "runs").latest("features"))
        rows: dict[str, dict[str, Any]] = {}
        for name, changes in SETTINGS.items():
            start = time.perf_counter()
            rows[name] = {**cross_validate(features, changes, args.seeds), "seconds": time.perf_counter() - start}
        reference = logistic_reference(features)
    counts = np.bincount(features.labels, minlength=2)
    print(
        f"demo features: {features.labels.size} samples ({counts[1]} deaths), {features.n_folds} folds, "
        f"{args.seeds} seeds; out-of-fold AUROC pooled over the folds"
    )
    print(f"{'setting':40s} {'AUROC mean ± sd':>16s} {'IQR P(death)':>13s} {'best epoch':>11s}")
    for name, row in rows.items():
        auroc = f"{row['auroc_mean']:.3f} ± {row['auroc_sd']:.3f}"
        print(f"{name:40s} {auroc:>16s} {row['iqr_median']:13.3f} {row['best_epoch_median']:11.0f}")
    print(f"{'logistic regression on summaries (ref.)':40s} {reference['auroc']:16.3f}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"seeds": args.seeds, "settings": rows, "logistic_reference": reference}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
