"""The toolkit from Python: load runs, models and features; attack a batch in one call; read analysis tables.

Everything here is re-exported by :mod:`lstm_adv` (``import lstm_adv as la``)::

    model = la.load_model("model-2026")            # a model run by id or unique prefix (or la.latest("model"))
    features = la.load_features(model)             # the FeatureMatrix it was trained on
    out = la.attack_batch(model, features, split="test", limit=64, tuned=la.latest("tune-attack"))
    out.x_adv, out.delta, out.table                # adversarial inputs, δ, one row per sample
    x_adv = la.SparseAttack(model, cells="all")(x, y)  # torchattacks/ART style: inputs in, adversarial out
    tables = la.analysis_tables(la.latest("analysis"))

Runs are found in the workspace ``home`` (default: ``$LSTM_ADV_HOME``, else the nearest ``.lstm-adv``
above the working directory), the same one the CLI uses. Attacks decide at the model run's own rule
and, by default as the CLI, alter the samples' measurements and push the altered records through the
fill (``cells="record"``; ``"observed"`` and ``"all"`` change model-input cells).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import attrs
import numpy as np
import pandas as pd

from lstm_adv.domain.decision import DecisionRule
from lstm_adv.domain.errors import ConfigError, DataError
from lstm_adv.domain.feature_matrix import FeatureMatrix, split_name
from lstm_adv.domain.perturbation import EXAMPLES, AttackBatchResult
from lstm_adv.domain.run_id import a_kind
from lstm_adv.results import artifacts
from lstm_adv.results.store import Run, RunStore
from lstm_adv.results.workspace import locate_home

if TYPE_CHECKING:
    from torch import nn

    from lstm_adv.attacks import L1Settings

RunRef = str | Run
#: The threat the Python API attacks with unless told otherwise: the CLI's default (``attack.cells``).
DEFAULT_CELLS = "record"


def store_of(home: str | Path | None = None) -> RunStore:
    """The run store of the workspace at ``home`` (default: ``$LSTM_ADV_HOME`` or the nearest ``.lstm-adv``)."""
    return RunStore(locate_home(home) / "runs")


def load_run(ref: RunRef, home: str | Path | None = None, *, kind: str | None = None) -> Run:
    """The run ``ref`` (id or unique prefix, or a Run already loaded); ``kind`` checks what it is."""
    if isinstance(ref, Run):
        if kind is not None and ref.kind != kind:
            raise DataError(f"run {ref.id} is {a_kind(ref.kind)} run, not {a_kind(kind)} run")
        return ref
    return store_of(home).get(str(ref), kind=kind)


def latest(kind: str, home: str | Path | None = None, *, defended: bool | None = None) -> Run:
    """The newest finished run of ``kind`` (``model``, ``tune-attack``, ``analysis``, …).

    ``lstm-adv defend`` writes model runs too, so ``latest("model")`` may be a defended model; ``defended=False``
    takes the newest model that no defense made (``True``: the newest defended one).
    """
    store = store_of(home)
    if defended is None or kind != "model":
        return store.latest(kind)
    from lstm_adv.results.summaries import ModelSummary

    runs = [
        run
        for run in store.list("model")
        if run.complete
        and isinstance(run.manifest.summary, ModelSummary)
        and (run.manifest.summary.defense is not None) == defended
    ]
    if not runs:
        raise DataError(f"there is no {'defended' if defended else 'undefended'} model run yet")
    return runs[-1]


def runs(kind: str | None = None, home: str | Path | None = None) -> pd.DataFrame:
    """Every finished run (optionally of one kind), oldest first: ``id``, ``kind``, ``created``, ``status``,
    ``parents``."""
    rows = [
        (str(r.id), r.kind, r.manifest.created, r.manifest.status, ", ".join(str(p) for p in r.manifest.parents))
        for r in store_of(home).list(kind)
    ]
    return pd.DataFrame(rows, columns=["id", "kind", "created", "status", "parents"])


@attrs.frozen
class Model:
    """A trained model ready to use: the network (eval mode), its decision rule and where it came from."""

    network: nn.Module = attrs.field(eq=False, repr=False)
    decision: DecisionRule
    run: Run = attrs.field(eq=False, repr=lambda run: str(run.id))
    features_run: Run = attrs.field(eq=False, repr=lambda run: str(run.id))

    def predict_proba(self, x: np.ndarray, *, batch_size: int = 2048) -> np.ndarray:
        """P(death) for inputs ``x`` of shape (N, 48, 19). Shape: (N,)."""
        import torch

        from lstm_adv.training_loop import predict_logits, probabilities

        device = next(self.network.parameters()).device
        tensor = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(device)
        return probabilities(predict_logits(self.network, tensor, batch_size))

    def predict(self, x: np.ndarray) -> np.ndarray:
        """The decision (0 survived, 1 died) at the model's rule. Shape: (N,)."""
        return self.decision.predict_probability(self.predict_proba(x))


def load_model(ref: RunRef | Model, home: str | Path | None = None, *, device: str = "cpu") -> Model:
    """The model of a model run (or of a tune-attack run's target), with its rule, checked against the
    probabilities the run stored."""
    if isinstance(ref, Model):
        return ref
    import torch

    from lstm_adv.results.summaries import TuneAttackSummary
    from lstm_adv.targets import resolve_target, target_from

    run = load_run(ref, home)
    store = RunStore(run.path.parent)
    if run.kind == "tune-attack":
        summary = run.summary_as(TuneAttackSummary)
        target = target_from(store, summary.model_run, summary.model_trial, summary.features_run)
    else:
        target = resolve_target(store, run)
    network, decision = target.load(artifacts.load_features(target.features_run), torch.device(device))
    return Model(network, decision, target.model_run, target.features_run)


def load_features(ref: RunRef | Model, home: str | Path | None = None) -> FeatureMatrix:
    """The FeatureMatrix of a features run, or the one a model (run) was trained on."""
    if isinstance(ref, Model):
        return artifacts.load_features(ref.features_run)
    run = load_run(ref, home)
    if run.kind == "features":
        return artifacts.load_features(run)
    for parent in run.manifest.parents:
        if parent.kind == "features":
            return artifacts.load_features(RunStore(run.path.parent).get(str(parent)))
    return load_features(load_model(run))


@attrs.frozen
class AttackOutput:
    """What :func:`attack_batch` returns: adversarial inputs, perturbations and one row per sample.

    ``x_adv`` = x + δ of the chosen example kind for samples the attack flipped, x itself otherwise
    (values in [0, 1]); ``delta`` the same δ (zero where nothing was found). ``table`` columns:
    ``row`` (position in the inputs), ``sample_index`` (FeatureMatrix row, or the position), ``label``,
    ``predicted`` (at the rule, before), ``attacked``, ``success``, ``p_before``, ``p_after``, ``l0``,
    ``l1``, ``linf``, ``reason`` (why a sample was not attacked, else empty). ``result`` is the full
    :class:`AttackBatchResult` (first, best and sparse examples).
    """

    x_adv: np.ndarray = attrs.field(eq=False, repr=False)
    delta: np.ndarray = attrs.field(eq=False, repr=False)
    table: pd.DataFrame = attrs.field(eq=False)
    result: AttackBatchResult = attrs.field(eq=False, repr=False)
    which: str
    decision: DecisionRule


def attack_batch(
    model: RunRef | Model,
    data: FeatureMatrix | np.ndarray,
    labels: np.ndarray | None = None,
    *,
    split: str | None = None,
    limit: int | None = None,
    observed: np.ndarray | None = None,
    record: np.ndarray | None = None,
    cells: str = DEFAULT_CELLS,
    tuned: RunRef | None = None,
    settings: L1Settings | None = None,
    which: str = "sparse",
    include_misclassified: bool = False,
    device: str = "cpu",
    batch_size: int = 256,
    home: str | Path | None = None,
) -> AttackOutput:
    """Attack a batch with the sparse L1 attack at the model's decision rule; returns :class:`AttackOutput`.

    ``data``: a FeatureMatrix (``split`` picks its rows, ``limit`` keeps the first N; its labels, record and
    observation mask are used) or an array (N, 48, 19) in [0, 1] with ``labels`` (default: the model's
    own decisions, so every sample is a target) and, for ``cells="record"`` (the default, as the CLI's),
    ``record`` (N, 49, 19) — the records the inputs were filled from, in the model's features run's units —
    or for ``cells="observed"`` ``observed`` (N, 48, 19) bool. Settings: ``tuned`` (a tune-attack run: its
    chosen settings), else ``settings``, else the attack's defaults. ``which``: the example kind in
    ``x_adv``/``delta`` (first, best or sparse).
    """
    import torch

    from lstm_adv.attacks import L1Settings
    from lstm_adv.config import CELLS, AttackConfig
    from lstm_adv.targets import attack_surface, l1_attack, tuned_settings

    if which not in EXAMPLES:
        raise ConfigError(f"which must be one of {', '.join(EXAMPLES)}; got {which!r}")
    if cells not in CELLS:
        raise ConfigError(f"cells must be one of {', '.join(CELLS)}; got {cells!r}")
    loaded = load_model(model, home, device=device)
    matrix, rows = _batch(loaded, data, labels, observed, record, split, limit, cells)
    config = AttackConfig(cells=cells, include_misclassified=include_misclassified, batch_size=batch_size)  # type: ignore[arg-type]
    if tuned is not None:
        chosen = tuned_settings(load_run(tuned, home, kind="tune-attack"), config)
    else:
        chosen = settings or L1Settings()
    spec = artifacts.feature_definitions(loaded.features_run).to_spec()
    surface = attack_surface(config, matrix, spec)
    engine = l1_attack(
        loaded.network,
        chosen,
        decision=loaded.decision,
        surface=surface,
        config=config,
        device=torch.device(device),
        max_batch_size=max(rows.size, 1),
    )
    result = surface.attack(engine, rows)
    x = matrix.values[rows]
    delta = np.where(result.found[:, None, None], result.deltas(which), 0.0).astype(np.float32)
    x_adv = np.clip(x + delta, 0.0, 1.0).astype(np.float32)
    table = _table(loaded, x, x_adv, delta, result, which)
    return AttackOutput(x_adv, delta, table, result, which, loaded.decision)


def _batch(
    model: Model,
    data: FeatureMatrix | np.ndarray,
    labels: np.ndarray | None,
    observed: np.ndarray | None,
    record: np.ndarray | None,
    split: str | None,
    limit: int | None,
    cells: str,
) -> tuple[FeatureMatrix, np.ndarray]:
    """The batch as a FeatureMatrix (arrays: one built around them, with the model's features run's scaling)
    and its rows."""
    if isinstance(data, FeatureMatrix):
        rows = data.indices(split_name(split)) if split else np.arange(data.n_samples)
        return data, rows[:limit] if limit is not None else rows
    x = np.asarray(data, dtype=np.float32)
    if x.ndim != 3 or x.shape[1:] != (48, 19):
        raise DataError(f"attack: inputs must have shape (N, 48, 19); got {x.shape}")
    x = x[:limit] if limit is not None else x
    y = model.predict(x) if labels is None else np.asarray(labels, dtype=np.int64)[: len(x)]
    if cells == "observed" and observed is None:
        raise DataError("cells='observed' needs the inputs' observation mask (observed=…), or use cells='all'")
    if cells == "record" and record is None:
        raise DataError(
            "cells='record' needs the records the inputs were filled from (record=…, e.g. a FeatureMatrix's "
            "record), or pass the FeatureMatrix itself; or use cells='observed' or 'all'"
        )
    return _wrap(model, x, y, observed, record), np.arange(len(x))


def _wrap(
    model: Model, x: np.ndarray, y: np.ndarray, observed: np.ndarray | None, record: np.ndarray | None
) -> FeatureMatrix:
    """A FeatureMatrix around bare inputs (ids are positions; one train split), for the attack's threat."""
    n = len(x)
    scaling = artifacts.load_features(model.features_run).scaling
    ids = np.arange(n, dtype=np.int64)
    return FeatureMatrix(
        values=x,
        labels=y,
        subject_ids=ids,
        hadm_ids=ids,
        icustay_ids=ids,
        feature_names=scaling.feature_names,
        split=np.zeros(n, dtype=np.int8),
        fold=np.zeros(n, dtype=np.int8),
        scaling=scaling,
        observed=None if observed is None else np.asarray(observed, dtype=bool)[:n],
        record=None if record is None else np.asarray(record, dtype=np.float32)[:n],
    )


def _table(
    model: Model, x: np.ndarray, x_adv: np.ndarray, delta: np.ndarray, result: AttackBatchResult, which: str
) -> pd.DataFrame:
    reasons = ["" if result.attacked[i] else result.not_completed_reason(i) for i in range(result.n)]
    return pd.DataFrame(
        {
            "row": np.arange(result.n),
            "sample_index": result.sample_index,
            "label": result.label,
            "predicted": result.predicted,
            "attacked": result.attacked,
            "success": result.found,
            "p_before": model.predict_proba(x),
            "p_after": model.predict_proba(x_adv),
            "l0": np.where(result.found, result.l0(which), 0),
            "input_l0": np.count_nonzero(delta, axis=(1, 2)),
            "l1": np.abs(delta).sum(axis=(1, 2), dtype=np.float64),
            "linf": np.abs(delta).max(axis=(1, 2)),
            "reason": reasons,
        }
    )


def _as_model(model: RunRef | Model) -> Model:
    return load_model(model)


@attrs.frozen
class SparseAttack:
    """The sparse attack as a callable, ``x_adv = SparseAttack(model)(x, y)`` (torchattacks/ART style).

    The same engine and settings as :func:`attack_batch` (``tuned`` run, ``settings`` or the defaults;
    ``cells``; ``which`` example kind); returns only the adversarial inputs (N, 48, 19) in [0, 1].
    """

    model: Model = attrs.field(converter=_as_model, repr=lambda model: str(model.run.id))
    tuned: RunRef | None = attrs.field(default=None, repr=lambda run: str(getattr(run, "id", run)))
    settings: L1Settings | None = None
    cells: str = DEFAULT_CELLS
    which: str = "sparse"
    device: str = "cpu"

    def __call__(
        self,
        x: np.ndarray,
        y: np.ndarray | None = None,
        *,
        observed: np.ndarray | None = None,
        record: np.ndarray | None = None,
    ) -> np.ndarray:
        """Adversarial inputs for ``x`` (N, 48, 19); ``record`` (N, 49, 19) for ``cells="record"``, ``observed``
        (N, 48, 19) for ``cells="observed"``."""
        out = attack_batch(
            self.model,
            x,
            y,
            observed=observed,
            record=record,
            cells=self.cells,
            tuned=self.tuned,
            settings=self.settings,
            which=self.which,
            device=self.device,
        )
        return out.x_adv


@attrs.frozen
class PgdAttack:
    """PGD as a callable, ``x_adv = PgdAttack(model, eps=0.05)(x, y)``, beside :class:`SparseAttack` (the same call
    shape): untargeted (``target`` 0/1: towards that class) L∞ or L2 PGD at the model's decision rule, on every
    model-input cell, with the CLI's defaults (``[pgd]``: iterations, step, random start, loss, seed; ε of
    ``defend.eps``). ``y`` defaults to the model's own decisions. Returns x + δ, (N, 48, 19) in [0, 1].
    """

    model: Model = attrs.field(converter=_as_model, repr=lambda model: str(model.run.id))
    eps: float | None = None
    norm: str = "linf"
    target: int | None = None
    device: str = "cpu"

    def __call__(self, x: np.ndarray, y: np.ndarray | None = None) -> np.ndarray:
        """Adversarial inputs for ``x`` (N, 48, 19) float32 in [0, 1]."""
        import torch

        from lstm_adv.attacks import PgdSettings
        from lstm_adv.config import PgdAttackName
        from lstm_adv.results.config_file import load_config
        from lstm_adv.targets import pgd_attack

        if self.norm not in ("linf", "l2"):
            raise ConfigError(f"norm must be linf or l2; got {self.norm!r}")
        config = load_config()
        name: PgdAttackName = "pgd-linf" if self.norm == "linf" else "pgd-l2"
        eps = config.defend.eps if self.eps is None else self.eps
        settings = attrs.evolve(PgdSettings.from_config(config.pgd, attack=name, eps=eps), target=self.target)
        inputs = np.asarray(x, dtype=np.float32)
        labels = self.model.predict(inputs) if y is None else np.asarray(y, dtype=np.int64)
        device = torch.device(self.device)
        attack = pgd_attack(
            self.model.network, settings, decision=self.model.decision, device=device, batch_size=config.pgd.batch_size
        )
        xt = torch.from_numpy(np.ascontiguousarray(inputs)).to(device)
        delta = attack.perturb(xt, torch.from_numpy(labels).to(device))
        adversarial: np.ndarray = np.clip((xt + delta).cpu().numpy(), 0.0, 1.0).astype(np.float32)
        return adversarial


def analysis_tables(ref: RunRef, home: str | Path | None = None) -> dict[str, pd.DataFrame]:
    """The tables of an analysis run (or the newest analysis of an attack run), by name: examples,
    cells, features, hours, clinical, discovery, measurements and measurement_hours (the record threat's;
    empty for the cell threats)."""
    from lstm_adv.analysis import RECORD_TABLES, TABLES

    run = load_run(ref, home)
    if run.kind == "attack":
        children = [r for r in RunStore(run.path.parent).list("analysis") if run.id in r.manifest.parents]
        if not children:
            raise DataError(f"attack run {run.id} has no analysis run yet; run `lstm-adv analyze --attack {run.id}`")
        run = children[-1]
    elif run.kind != "analysis":
        raise DataError(f"run {run.id} is {a_kind(run.kind)} run; analysis_tables needs an analysis or attack run")
    tables = {}
    for name in TABLES:
        if name in RECORD_TABLES and not (run.path / f"{name}.parquet").is_file():
            tables[name] = pd.DataFrame()  # an analysis made before the record threat's tables existed
            continue
        tables[name] = artifacts.read_table(run, f"{name}.parquet")
    return tables


__all__ = [
    "AttackOutput",
    "Model",
    "PgdAttack",
    "SparseAttack",
    "analysis_tables",
    "attack_batch",
    "latest",
    "load_features",
    "load_model",
    "load_run",
    "runs",
    "store_of",
]
