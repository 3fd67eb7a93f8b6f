"""Every file a run holds: its name, and the one reader and writer of it.

Stages read their parents' files and write their own through these functions, so a file's name
and format are defined once. Readers turn a missing or damaged file into a :class:`DataError`
naming the run and the fix. torch is imported only by the functions that need it.
"""

from __future__ import annotations

import io
import json
import pickle
import shutil
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import attrs
import numpy as np
import pandas as pd

from lstm_adv.domain.decision import DecisionRule
from lstm_adv.domain.errors import ConfigError, DataError
from lstm_adv.domain.feature_matrix import FeatureMatrix
from lstm_adv.domain.features import FeatureDefinitions
from lstm_adv.domain.perturbation import AttackBatchResult
from lstm_adv.domain.run_id import a_kind
from lstm_adv.domain.stay import Stay
from lstm_adv.models.hyperparameters import Hyperparameters
from lstm_adv.resources import read_feature_definitions
from lstm_adv.results.converter import describe_error, structure, unstructure
from lstm_adv.results.store import Run, RunStore
from lstm_adv.results.summaries import (
    FeaturesSummary,
    ModelSummary,
    QuerySummary,
    SynthSummary,
    TunedAttackSettings,
    TuneModelSummary,
)

if TYPE_CHECKING:
    import torch

    from lstm_adv.models.bilstm import BiLSTM

T = TypeVar("T")
# What reading a damaged or truncated file raises (npz files are zip archives; torch files too).
UNREADABLE = (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError)

# query runs: one Parquet table each
MEASUREMENT_TABLES = ("vitals", "labs", "bloodgas")
STAY_COLUMNS = (
    "subject_id",
    "hadm_id",
    "icustay_id",
    "intime",
    "outtime",
    "age_years",
    "hospital_los_days",
    "icu_los_days",
    "hospital_expire_flag",
)
# synth runs: each admission's true death probability
TRUTH_FILE = "truth.parquet"
TRUTH_COLUMNS = ("hadm_id", "death_probability", "label", "severity")
# features runs
FEATURES_FILE = "features.npz"
# model runs (and every trial folder of a tune-model run)
MODEL_FILE = "model.pt"
PARAMS_FILE = "params.json"
METRICS_FILE = "metrics.json"
HISTORY_FILE = "history.json"
MODEL_CURVES_FILE = "curves.parquet"
PREDICTIONS_FILE = "predictions.npz"
DEFENSE_FILE = "defense.json"
TENSORBOARD_DIR = "tensorboard"
FOLDS_DIR = "folds"
# tuning runs
STUDY_FILE = "study.journal"
TRIALS_DIR = "trials"
BEST_PARAMS_FILE = "best_params.json"
# attack runs
RESULTS_FILE = "results.npz"
ATTACK_PARAMS_FILE = "params.json"
# analysis runs: <table>.parquet and figures/<name>.png|svg
FIGURES_DIR = "figures"
# robustness runs
ROBUSTNESS_CURVES_FILE = "curves.parquet"
CONFUSION_FILE = "confusion.parquet"
L1_FILE = "l1.parquet"


# --- JSON and tables ------------------------------------------------------------------------------------


def jsonable(data: Any) -> Any:
    """``data`` with NaN/inf floats replaced by ``None`` and tuples/arrays as lists."""
    if isinstance(data, float):
        return data if np.isfinite(data) else None
    if isinstance(data, Mapping):
        return {str(k): jsonable(v) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [jsonable(v) for v in data]
    if isinstance(data, np.generic):
        return jsonable(data.item())
    return data


def copy_stored(run: Run, folder: str, destination: Path) -> None:
    """Copy every file of ``run`` under ``folder`` to the same place under ``destination``, each checked first."""
    prefix = folder.rstrip("/") + "/"
    for name in sorted(run.manifest.checksums):
        if name.startswith(prefix):
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(run.file(name), target)


def write_json(path: Path, data: Any) -> None:
    """JSON with non-finite numbers as null."""
    path.write_text(json.dumps(jsonable(data), indent=2, allow_nan=False), encoding="utf-8")


def read_stored(run: Run, name: str, read: Callable[[Path], T], *, what: str) -> T:
    """``read(path)`` of file ``name`` of ``run`` (checked against its checksum); a damaged file is one line."""
    path = run.file(name)
    try:
        return read(path)
    except DataError:  # the reader's own message (e.g. missing arrays)
        raise
    except UNREADABLE as exc:
        raise DataError(
            f"run {run.id}: {name} cannot be read as {what} ({_first_line(exc)}); re-run the stage that wrote it"
        ) from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def read_json(run: Run, name: str) -> Any:
    """A JSON file of ``run``; a missing or malformed file is a :class:`DataError`."""
    path = run.file(name)  # outside the try: a checksum mismatch is its own message
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise DataError(f"run {run.id}: {name} is not valid JSON ({exc}); re-run the stage") from None


def read_table(run: Run, name: str, columns: list[str] | None = None) -> pd.DataFrame:
    """A stored Parquet table of ``run`` (some ``columns`` only); unreadable is a :class:`DataError`."""
    import pyarrow.parquet as pq

    path = run.file(name)  # outside the try: a checksum mismatch is its own message
    try:
        frame: pd.DataFrame = pq.read_table(path, columns=columns).to_pandas()
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(f"run {run.id}: {name} cannot be read ({exc}); re-run the stage") from None
    return frame


def write_table(path: Path, frame: pd.DataFrame) -> None:
    """A table as Parquet, without the index."""
    frame.to_parquet(path, index=False)


# --- query runs -----------------------------------------------------------------------------------------
def read_stays(run: Run) -> tuple[Stay, ...]:
    """Every ICU stay a query run exported (``stays.parquet``), before the inclusion rules, as typed values.

    A stay with a missing time or length of stay (MIMIC-III has a few) is left out: no rule can be
    applied to it, and the query's flags exclude it too.
    """
    frame = read_table(run, "stays.parquet", list(STAY_COLUMNS)).dropna()
    records: list[dict[str, Any]] = frame.to_dict("records")  # type: ignore[assignment]
    try:
        return tuple(
            Stay(
                subject_id=int(r["subject_id"]),
                hadm_id=int(r["hadm_id"]),
                icustay_id=int(r["icustay_id"]),
                intime=r["intime"].to_pydatetime(),
                outtime=r["outtime"].to_pydatetime(),
                age_years=float(r["age_years"]),
                hospital_los_days=float(r["hospital_los_days"]),
                icu_los_days=float(r["icu_los_days"]),
                hospital_expire_flag=int(r["hospital_expire_flag"]),
            )
            for r in records
        )
    except (ValueError, TypeError) as exc:
        raise DataError(f"query run {run.id}: stays.parquet holds an invalid stay ({exc}); re-run the query") from None


# --- synthetic truth ------------------------------------------------------------------------------------


def load_truth(run: Run) -> pd.DataFrame:
    """The ``truth.parquet`` of a synth run: hadm_id, death_probability, label, severity per admission."""
    if run.kind != "synth":
        raise DataError(f"run {run.id} is {a_kind(run.kind)} run; the synthetic truth is stored by synth runs")
    truth = read_table(run, TRUTH_FILE)
    missing = [c for c in TRUTH_COLUMNS if c not in truth.columns]
    if missing:
        raise DataError(f"run {run.id}: {TRUTH_FILE} lacks column(s) {', '.join(missing)}; regenerate it")
    return truth


def find_synth_run(store: RunStore, query_run: Run) -> Run | None:
    """The synth run that wrote the tables ``query_run`` read, or None (real data, or the run is gone).

    That is the latest synth run created no later than the query run with the same database
    (summary ``source``) and ``schema``. Walk a features or model run up to its query run first.
    """
    summary = query_run.manifest.summary
    if not isinstance(summary, QuerySummary):
        return None
    matches = [
        run
        for run in store.list("synth")
        if isinstance(run.manifest.summary, SynthSummary)
        and (run.manifest.summary.schema, run.manifest.summary.source) == (summary.schema, summary.source)
        and run.manifest.created <= query_run.manifest.created
    ]
    return matches[-1] if matches else None


# --- features -------------------------------------------------------------------------------------------


def load_features(run: Run) -> FeatureMatrix:
    """The FeatureMatrix stored in a features run."""
    return read_stored(run, FEATURES_FILE, FeatureMatrix.from_npz, what="a feature matrix")


def save_features(folder: Path, matrix: FeatureMatrix) -> None:
    """Store ``matrix`` as a features run's file."""
    matrix.to_npz(folder / FEATURES_FILE)


def feature_definitions(run: Run) -> FeatureDefinitions:
    """The feature definitions the data of ``run`` were made with (units, names, itemids).

    Those stored in the run if it is a query or features run, else in its nearest such ancestor;
    the shipped features.toml for lineages made before definitions were stored.
    """
    store = RunStore(run.path.parent)
    pending = [run]
    while pending:
        current = pending.pop(0)
        summary = current.manifest.summary
        if isinstance(summary, QuerySummary | FeaturesSummary) and summary.features is not None:
            return summary.features
        pending += [store.get(str(p)) for p in current.manifest.parents if (store.root / str(p)).is_dir()]
    return read_feature_definitions()


# --- models ---------------------------------------------------------------------------------------------


def save_model(folder: Path, model: BiLSTM) -> None:
    """The network's weights (``model.pt``) and hyperparameters (``params.json``) into ``folder``."""
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    # written by Python, so a full disk is an OSError (torch's own writer reports it as a RuntimeError)
    (folder / MODEL_FILE).write_bytes(buffer.getvalue())
    write_json(folder / PARAMS_FILE, model.params.to_dict())


def load_params(path: Path) -> Hyperparameters:
    """The hyperparameters stored in a ``params.json``."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(
            f"{path} cannot be read as hyperparameters ({_first_line(exc)}); re-run the stage that wrote it"
        ) from None
    if not isinstance(data, dict):
        raise DataError(f"{path} must hold a table of hyperparameters")
    return Hyperparameters.from_mapping(data, origin=str(path))


def load_model(folder: Path, *, device: str | torch.device = "cpu") -> BiLSTM:
    """A trained BiLSTM from a folder holding ``params.json`` and ``model.pt`` (a model run or a tuning trial)."""
    params_path, weights_path = folder / PARAMS_FILE, folder / MODEL_FILE
    if not params_path.is_file() or not weights_path.is_file():
        raise DataError(f"{folder} holds no trained model ({PARAMS_FILE} and {MODEL_FILE}); train one first")
    return _build_model(params_path, weights_path, device=device, origin=str(folder))


def load_run_model(run: Run, trial: int | None = None, *, device: str | torch.device = "cpu") -> BiLSTM:
    """The BiLSTM of a model run, or of trial ``trial`` of a tune-model run; its files are checked first."""
    prefix = "" if trial is None else f"{TRIALS_DIR}/{trial}/"
    params_path, weights_path = run.file(prefix + PARAMS_FILE), run.file(prefix + MODEL_FILE)
    return _build_model(params_path, weights_path, device=device, origin=f"run {run.id}: {prefix}")


def _build_model(params_path: Path, weights_path: Path, *, device: str | torch.device, origin: str) -> BiLSTM:
    import torch

    from lstm_adv.models.bilstm import BiLSTM

    model = BiLSTM(load_params(params_path))
    try:
        state = torch.load(weights_path, map_location=device, weights_only=True)
    except (*UNREADABLE, RuntimeError) as exc:
        # torch's unpickling message advises weights_only=False, which would run code from the file: not shown
        reason = "not a weights file" if isinstance(exc, pickle.UnpicklingError) else _first_line(exc)
        raise DataError(
            f"{origin}{MODEL_FILE} cannot be read as model weights ({reason}); re-run the stage that wrote it"
        ) from None
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError):
        raise DataError(
            f"{origin}{MODEL_FILE} does not hold weights of the network in {PARAMS_FILE}; re-run the stage that "
            "wrote them"
        ) from None
    return model.to(device).eval()


def is_cv_run(run: Run) -> bool:
    """Whether a model run is a cross-validation run (one model per fold, no single test evaluation)."""
    summary = run.manifest.summary
    return isinstance(summary, ModelSummary) and summary.cv


def load_trained_model(run: Run, *, device: str | torch.device = "cpu") -> BiLSTM:
    """The BiLSTM of a model run (not a cross-validation run: those hold one model per fold)."""
    if is_cv_run(run):
        raise DataError(f"model run {run.id} is a cross-validation run; train without --cv to get one model")
    return load_run_model(run, device=device)


@attrs.frozen
class Predictions:
    """A model's P(death) on its validation and test (evaluation) samples, by FeatureMatrix row. Shapes: (n,)."""

    validation_index: np.ndarray = attrs.field(eq=attrs.cmp_using(eq=np.array_equal))
    validation: np.ndarray = attrs.field(eq=attrs.cmp_using(eq=np.array_equal))
    test_index: np.ndarray = attrs.field(eq=attrs.cmp_using(eq=np.array_equal))
    test: np.ndarray = attrs.field(eq=attrs.cmp_using(eq=np.array_equal))


def save_predictions(folder: Path, predictions: Predictions) -> None:
    """A model run's validation and test probabilities (read by later stages and audits, never by reports)."""
    np.savez(folder / PREDICTIONS_FILE, **attrs.asdict(predictions))


def load_predictions(run: Run) -> Predictions:
    """The stored probabilities of a model run; a run without them is one line saying to retrain."""
    if not (run.path / PREDICTIONS_FILE).is_file():
        raise DataError(
            f"model run {run.id} stores no probabilities (it was made before the toolkit recorded its decision "
            "rule); re-run `lstm-adv train` (or `lstm-adv defend`) to make one that does"
        )
    try:
        with np.load(run.file(PREDICTIONS_FILE), allow_pickle=False) as data:
            return Predictions(**{field.name: data[field.name] for field in attrs.fields(Predictions)})
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(f"run {run.id}: {PREDICTIONS_FILE} cannot be read ({exc}); re-run the training") from None


def load_decision(run: Run) -> DecisionRule:
    """The decision rule a model run stores (its rule and threshold); it needs the stored probabilities too."""
    load_predictions(run)
    summary = run.summary_as(ModelSummary)
    if summary.decision is None or summary.threshold is None:
        raise DataError(f"model run {run.id} records no decision rule; re-run `lstm-adv train`")
    return DecisionRule(summary.decision, summary.threshold)


def trial_params(run: Run, number: int | None = None) -> tuple[int, Hyperparameters]:
    """The hyperparameters of trial ``number`` (default: the best completed trial) of a tune-model run."""
    summary = run.summary_as(TuneModelSummary)
    if number is None:
        if summary.best is None:
            raise ConfigError(f"tuning run {run.id} has no completed trial; resume it with --resume {run.id}")
        number = summary.best.number
    match = [t for t in summary.trials if t.number == number]
    if not match or match[0].state != "complete" or match[0].params is None:
        done = ", ".join(str(t.number) for t in summary.trials if t.state == "complete") or "none"
        raise ConfigError(f"tuning run {run.id} has no completed trial {number}; completed trials: {done}")
    return number, match[0].params


# --- attacks --------------------------------------------------------------------------------------------


def load_attack_result(run: Run) -> AttackBatchResult:
    """The per-sample results of an attack run."""
    return read_stored(run, RESULTS_FILE, AttackBatchResult.from_npz, what="attack results")


def save_attack_result(folder: Path, result: AttackBatchResult) -> None:
    """Store an attack's per-sample results."""
    result.to_npz(folder / RESULTS_FILE)


def save_tuned_settings(folder: Path, settings: TunedAttackSettings) -> None:
    """The best trial's attack settings of a tune-attack run (``best_params.json``)."""
    write_json(folder / BEST_PARAMS_FILE, unstructure(settings))


def load_tuned_settings(run: Run) -> TunedAttackSettings | None:
    """The best trial's attack settings of a tune-attack run, ``None`` when no trial completed."""
    if not (run.path / BEST_PARAMS_FILE).is_file():
        return None
    data = read_json(run, BEST_PARAMS_FILE)
    try:
        return structure(data, TunedAttackSettings)
    except Exception as exc:  # cattrs raises exception groups
        raise DataError(
            f"run {run.id}: {BEST_PARAMS_FILE} does not hold attack settings "
            f"({describe_error(exc, TunedAttackSettings)}); re-run the tuning"
        ) from None
