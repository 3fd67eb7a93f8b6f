"""Reading a run's files: checked against the manifest, and a damaged file is one line naming the run and file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lstm_adv.domain.errors import ChecksumError, DataError
from lstm_adv.results import artifacts
from lstm_adv.results.store import MANIFEST, Run, RunStore, sha256_file
from lstm_adv.results.summaries import TunedAttackSettings
from tests.strategies import tiny_feature_matrix
from tests.test_attack_stage import model_run
from tests.test_train import features_run


def _flip_a_byte(path: Path, at: int = 100) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


def reseal(run: Run) -> Run:
    """``run`` with checksums recomputed: as if its files had been damaged before the run was written."""
    path = run.path / MANIFEST
    data = json.loads(path.read_text(encoding="utf-8"))
    data["checksums"] = {name: sha256_file(run.path / name) for name in data["checksums"]}
    path.write_text(json.dumps(data), encoding="utf-8")
    return RunStore(run.path.parent).get(str(run.id))


@pytest.fixture
def runs(tmp_path: Path) -> tuple[RunStore, Run, Run]:
    store = RunStore(tmp_path / "runs")
    features = features_run(store, tiny_feature_matrix(40))
    return store, features, model_run(store, features)


def test_a_changed_model_file_is_refused_before_it_is_loaded(runs: tuple[RunStore, Run, Run]) -> None:
    """A model.pt whose checksum no longer matches the manifest is a ChecksumError naming the file and the run."""
    _store, _features, model = runs
    _flip_a_byte(model.path / "model.pt")
    with pytest.raises(ChecksumError) as info:
        artifacts.load_trained_model(model)
    assert str(info.value) == (
        f"run {model.id}: model.pt no longer matches the checksum in its manifest (it changed after the run was "
        "written); restore the file or re-run the stage that wrote it"
    )


def test_each_file_is_hashed_once_per_process(runs: tuple[RunStore, Run, Run], monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading a model three times hashes each of its two files once."""
    from lstm_adv.results import store

    _store, _features, model = runs
    hashed: list[str] = []
    original = store.sha256_file

    def counting(path: Path) -> str:
        hashed.append(path.name)
        return original(path)

    monkeypatch.setattr(store, "sha256_file", counting)
    for _ in range(3):
        artifacts.load_trained_model(model)
    assert sorted(hashed) == ["model.pt", "params.json"]


def test_unreadable_weights_are_one_line_naming_the_file(runs: tuple[RunStore, Run, Run]) -> None:
    """A model.pt damaged before it was checksummed cannot be read as weights: one DataError line."""
    _store, _features, model = runs
    _flip_a_byte(model.path / "model.pt", at=0)
    model = reseal(model)
    with pytest.raises(DataError) as info:
        artifacts.load_trained_model(model)
    assert str(info.value) == (
        f"run {model.id}: model.pt cannot be read as model weights (not a weights file); re-run the stage that wrote it"
    )


def test_malformed_params_json_is_one_line(runs: tuple[RunStore, Run, Run]) -> None:
    """A params.json holding `{bad` names the file and the JSON problem."""
    _store, _features, model = runs
    (model.path / "params.json").write_text("{bad", encoding="utf-8")
    model = reseal(model)
    with pytest.raises(DataError) as info:
        artifacts.load_trained_model(model)
    assert str(info.value) == (
        f"{model.path / 'params.json'} cannot be read as hyperparameters (Expecting property name enclosed in "
        "double quotes: line 1 column 2 (char 1)); re-run the stage that wrote it"
    )


@pytest.mark.parametrize(("name", "what"), [("features.npz", "a feature matrix"), ("results.npz", "attack results")])
def test_truncated_npz_files_are_one_line(tmp_path: Path, name: str, what: str) -> None:
    """A truncated .npz (a zip archive) is a DataError naming the run and the file, not a BadZipFile traceback."""
    store = RunStore(tmp_path / "runs")
    features = features_run(store, tiny_feature_matrix(40))
    with store.create("attack") as writer:
        writer.file("results.npz").write_bytes((features.path / "features.npz").read_bytes())
    run = features if name == "features.npz" else writer.committed
    assert run is not None
    path = run.path / name
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    run = reseal(run)
    read = artifacts.load_features if name == "features.npz" else artifacts.load_attack_result
    with pytest.raises(DataError) as info:
        read(run)  # type: ignore[operator]
    assert str(info.value) == (
        f"run {run.id}: {name} cannot be read as {what} (File is not a zip file); re-run the stage that wrote it"
    )


def test_best_params_with_a_string_for_a_number_is_one_line(tmp_path: Path) -> None:
    """best_params.json with "kappa": "high" names the file and the key."""
    store = RunStore(tmp_path / "runs")
    with store.create("tune-attack") as writer:
        settings = TunedAttackSettings(kappa=0.1, lam=1e-3, step_size=0.05, method="ista")
        artifacts.save_tuned_settings(writer.path, settings)
        data = json.loads((writer.path / artifacts.BEST_PARAMS_FILE).read_text())
        (writer.path / artifacts.BEST_PARAMS_FILE).write_text(json.dumps({**data, "kappa": "high"}))
    assert writer.committed is not None
    with pytest.raises(DataError) as info:
        artifacts.load_tuned_settings(writer.committed)
    assert str(info.value) == (
        f"run {writer.id}: best_params.json does not hold attack settings (key 'kappa' must be a number, got "
        "'high'); re-run the tuning"
    )


def test_a_changed_json_file_is_a_checksum_error_not_a_json_error(tmp_path: Path) -> None:
    """read_json reports a changed file as changed, not as malformed JSON wrapping the checksum message."""
    store = RunStore(tmp_path / "runs")
    with store.create("tune-attack") as writer:
        artifacts.write_json(writer.file(artifacts.BEST_PARAMS_FILE), {"kappa": 0.1})
    assert writer.committed is not None
    (writer.committed.path / artifacts.BEST_PARAMS_FILE).write_text('{"kappa": "high"}')
    with pytest.raises(ChecksumError) as info:
        artifacts.read_json(writer.committed, artifacts.BEST_PARAMS_FILE)
    assert str(info.value) == (
        f"run {writer.id}: best_params.json no longer matches the checksum in its manifest (it changed after the run "
        "was written); restore the file or re-run the stage that wrote it"
    )
