"""The Python API (`import lstm_adv as la`) and the example notebook that uses it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import attrs
import numpy as np
import pytest
import torch

import lstm_adv as la
from lstm_adv.analysis import TABLES, run_analysis
from lstm_adv.attack import run_attack
from lstm_adv.domain.errors import ConfigError, DataError
from lstm_adv.results.config_file import load_config
from lstm_adv.results.store import Run, RunStore
from lstm_adv.train import run_training
from lstm_adv.tune_attack import run_attack_tuning
from tests.strategies import tiny_feature_matrix
from tests.test_attack_stage import FIXED
from tests.test_train import FAST, PARAMS, features_run

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "attack_from_python.py"


@attrs.frozen
class Home:
    home: Path
    model: Run
    tuned: Run
    analysis: Run


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Home:
    """A workspace holding features, a trained model, a tune-attack run, an attack and its analysis."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("api")
    store = RunStore(root / "runs")
    features = features_run(store, tiny_feature_matrix(60))
    config = attrs.evolve(load_config(overrides={**FIXED, "attack.cells": "observed"}), model=FAST)
    model = run_training(store, features, attrs.evolve(PARAMS, learning_rate=0.01), config)
    tuned = run_attack_tuning(store, model, config, trials=1)
    attack = run_attack(store, tuned, config, split="all")
    return Home(root, model, tuned, run_analysis(store, str(attack.id), config))


def test_attack_returns_adversarial_inputs_that_flip_the_decision(home: Home) -> None:
    """One call gives x_adv in [0, 1] that the model decides differently (at its rule) for every success,
    δ only on measured cells, and a table that agrees with both."""
    model = la.load_model(str(home.model.id)[:-2], home.home)
    features = la.load_features(model, home.home)
    out = la.attack_batch(model, features, split="all", cells="observed", tuned=home.tuned, home=home.home)
    table = out.table
    assert list(table.columns) == [
        "row",
        "sample_index",
        "label",
        "predicted",
        "attacked",
        "success",
        "p_before",
        "p_after",
        "l0",
        "input_l0",
        "l1",
        "linf",
        "reason",
    ]
    success = table["success"].to_numpy()
    assert success.sum() >= 3
    assert out.x_adv.min() >= 0.0
    assert out.x_adv.max() <= 1.0
    x = features.values
    assert np.array_equal(model.predict(out.x_adv[success]), 1 - model.predict(x[success]))
    assert np.array_equal(model.predict(out.x_adv[~success]), model.predict(x[~success]))
    mask = features.observation_mask()
    assert not (out.delta != 0)[~mask].any()
    assert np.array_equal(table["l0"].to_numpy(), out.result.l0("sparse") * success)
    assert np.array_equal(table["input_l0"].to_numpy(), np.count_nonzero(out.delta, axis=(1, 2)))
    assert (table.loc[~table["attacked"], "reason"] != "").all()
    assert out.decision == model.decision


def test_attack_on_plain_arrays_uses_the_models_own_decisions(home: Home) -> None:
    """Arrays without labels: every sample is a target (its own decision is the label); cells="all"."""
    model = la.load_model(home.model)
    x = la.load_features(home.model).values[:12]
    out = la.attack_batch(model, x, cells="all", settings=la.L1Settings(max_iterations=40, search_steps=2))
    assert out.table["attacked"].all()
    assert np.array_equal(out.table["predicted"], model.predict(x))
    flipped = out.table["success"].to_numpy()
    assert np.array_equal(model.predict(out.x_adv[flipped]), 1 - model.predict(x[flipped]))
    x_adv = la.SparseAttack(home.model, cells="all", settings=la.L1Settings(max_iterations=40, search_steps=2))(x)
    assert np.array_equal(x_adv, out.x_adv)  # the callable is the same attack


def test_the_api_attacks_records_by_default_as_the_cli_does(home: Home) -> None:
    """attack_batch and SparseAttack default to the record threat: arrays come with their records, and every
    success is an input that the numpy fill makes from the altered record."""
    from lstm_adv.domain.record import fill_record

    model = la.load_model(home.model)
    features = la.load_features(home.model)
    x, record = features.values[:12], features.record_values()[:12]
    settings = la.L1Settings(max_iterations=40, search_steps=2)
    out = la.attack_batch(model, x, record=record, settings=settings)
    assert out.result.record_space
    change = out.result.record_deltas("sparse")
    altered = np.where(np.isnan(record), np.nan, np.nan_to_num(record) + change)
    np.testing.assert_allclose(fill_record(altered, features.scaling.scaled_median), out.x_adv, atol=1e-6)
    assert np.array_equal(la.SparseAttack(home.model, settings=settings)(x, record=record), out.x_adv)
    assert la.SparseAttack(home.model).cells == "record"


def test_bad_api_input_is_one_clear_error(home: Home) -> None:
    """Unknown example kind or cell set, observed cells without a mask, wrong shapes: one-line errors."""
    model = la.load_model(home.model)
    x = np.zeros((2, 48, 19), dtype=np.float32)
    with pytest.raises(ConfigError, match="which must be one of first, best, sparse; got 'worst'"):
        la.attack_batch(model, x, which="worst")
    with pytest.raises(ConfigError, match="cells must be one of record, observed, all; got 'some'"):
        la.attack_batch(model, x, cells="some")
    with pytest.raises(DataError, match=r"cells='record' needs the records the inputs were filled from"):
        la.attack_batch(model, x)
    with pytest.raises(DataError, match=r"cells='observed' needs the inputs' observation mask"):
        la.attack_batch(model, x, cells="observed")
    with pytest.raises(DataError, match=r"inputs must have shape \(N, 48, 19\); got \(2, 19\)"):
        la.attack_batch(model, x[:, 0, :], cells="all")


def test_runs_and_analysis_tables_come_back_as_dataframes(home: Home) -> None:
    """runs() lists the workspace; analysis_tables gives every table, from the analysis or its attack run."""
    listed = la.runs(home=home.home)
    assert {"features", "model", "tune-attack", "attack", "analysis"} <= set(listed["kind"])
    tables = la.analysis_tables(home.analysis, home.home)
    assert set(tables) == set(TABLES)
    attack_id = str(home.analysis.manifest.parents[0])
    assert la.analysis_tables(attack_id, home.home)["features"].equals(tables["features"])
    with pytest.raises(DataError, match="analysis_tables needs an analysis or attack run"):
        la.analysis_tables(home.model)


def test_import_is_light() -> None:
    """`import lstm_adv` loads neither torch nor pandas; a public name imports them on first use."""
    code = (
        "import sys, lstm_adv\n"
        "assert 'torch' not in sys.modules and 'pandas' not in sys.modules, 'heavy import'\n"
        "lstm_adv.load_run\n"
        "assert 'pandas' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.slow
def test_example_notebook_runs(home: Home, monkeypatch: pytest.MonkeyPatch) -> None:
    """examples/attack_from_python.py runs top to bottom as a notebook against a workspace."""
    import jupytext

    from lstm_adv.rendering import execute_notebook

    monkeypatch.setenv("LSTM_ADV_HOME", str(home.home))
    notebook = jupytext.read(EXAMPLE)
    execute_notebook(notebook, {}, cwd=home.home, timeout_s=600, origin=EXAMPLE.name)
    outputs = "".join(
        out.get("text", "") for cell in notebook.cells if cell.cell_type == "code" for out in cell.get("outputs", [])
    )
    assert "attacked samples flipped" in outputs
    assert "median number of changed cells" in outputs


def test_pgd_beside_the_sparse_attack_with_short_reprs(home: Home) -> None:
    """la.PgdAttack has SparseAttack's call shape and the CLI's defaults: x_adv within ε of x in the box; reprs of
    models and attacks name runs by id instead of printing manifests."""
    model = la.load_model(home.model)
    x = la.load_features(home.model).values[:8]
    x_adv = la.PgdAttack(home.model, eps=0.05)(x)
    assert x_adv.shape == x.shape
    assert float(np.abs(x_adv - x).max()) <= 0.05 + 1e-6
    assert x_adv.min() >= 0.0
    assert x_adv.max() <= 1.0
    for value in (model, la.SparseAttack(home.model), la.PgdAttack(home.model)):
        shown = repr(value)
        assert len(shown) < 400
        assert str(home.model.id) in shown
