"""The run store: atomic writes, manifests, lookup by id, prefix and kind."""

from __future__ import annotations

import errno
import json
import os
import signal
import stat
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lstm_adv.config import Config
from lstm_adv.domain.errors import (
    AmbiguousRunError,
    DataError,
    RunKindError,
    RunNotFoundError,
    RunStatusError,
    RunStoreError,
)
from lstm_adv.domain.run_id import RunId
from lstm_adv.results.converter import structure, unstructure
from lstm_adv.results.manifest import Manifest
from lstm_adv.results.store import MANIFEST, RunStore
from lstm_adv.results.summaries import SUMMARY_TYPES, ModelSummary, QuerySummary, Step
from tests.strategies import attrs_instances, json_objects, run_ids


class BoomError(Exception):
    """Raised by tests to interrupt a write."""


@st.composite
def manifests(draw: st.DrawFn) -> Manifest:
    """A manifest of any kind whose summary is that kind's summary class (or none)."""
    kind = draw(st.sampled_from(sorted(SUMMARY_TYPES)))
    return Manifest(
        id=draw(run_ids.map(lambda r: RunId(kind=kind, created=r.created, token=r.token))),
        kind=kind,
        created=draw(st.datetimes(timezones=st.just(UTC))),
        parents=tuple(draw(st.lists(run_ids, max_size=3))),
        config=draw(json_objects),
        package_version=draw(st.text(min_size=1, max_size=10)),
        git_commit=draw(st.none() | st.text(alphabet="0123456789abcdef", min_size=40, max_size=40)),
        status=draw(st.sampled_from(["complete", "interrupted"])),
        checksums=draw(st.dictionaries(st.text(min_size=1, max_size=10), st.text(min_size=64, max_size=64))),
        summary=draw(st.none() | attrs_instances(SUMMARY_TYPES[kind])),
    )


@given(manifests())
def test_manifest_round_trips_through_json(manifest: Manifest) -> None:
    """Manifest.from_data(to_data(m)) == m, also after a trip through JSON text, with the summary typed."""
    assert Manifest.from_data(json.loads(json.dumps(manifest.to_data()))) == manifest


def test_a_summary_of_an_older_version_fails_with_one_line_naming_the_run(tmp_path: Path) -> None:
    """A manifest whose summary does not fit its kind's class names the run and says to re-run its stage."""
    store = _store(tmp_path)
    run_id = _make(store, "query", "abcd", 1)
    path = store.root / str(run_id) / MANIFEST
    data = json.loads(path.read_text())
    data["summary"] = {"flow": [], "tables": {}, "schema": "mimiciii", "source": "x", "rows": 3}
    path.write_text(json.dumps(data))
    with pytest.raises(RunStoreError) as info:
        store.get(str(run_id))
    assert str(info.value) == (
        f"run {run_id} was written by another version of lstm-adv (its summary does not fit: unknown key 'rows'; "
        "known keys here: features, flow, schema, source, tables, window_start); re-run its stage to use it"
    )


def test_summary_as_names_the_run_when_it_is_of_another_kind(tmp_path: Path) -> None:
    """Asking a run for another kind's summary is one clear line."""
    store = _store(tmp_path)
    run = store.get(str(_make(store, "query", "abcd", 1)))
    with pytest.raises(DataError) as info:
        run.summary_as(ModelSummary)
    assert str(info.value) == f"run {run.id} (query) holds no summary, not a ModelSummary; re-run its stage"


@given(attrs_instances(Config))
def test_config_round_trips(config: Config) -> None:
    """The effective configuration survives unstructure/structure unchanged."""
    assert structure(unstructure(config), Config) == config


def _store(tmp_path: Path) -> RunStore:
    return RunStore(tmp_path / "runs")


def test_committed_run_is_listed_with_checksums(tmp_path: Path) -> None:
    """A finished write is listed, its files are checksummed and verify clean."""
    store = _store(tmp_path)
    summary = QuerySummary(flow=(Step("icu stays", 3),), tables={"stays": 3}, schema="mimiciii", source="x")
    with store.create("query", config={"a": 1}) as writer:
        writer.file("t.parquet").write_bytes(b"data")
        writer.file("sub/x.json").write_text("{}")
        writer.summary = summary
    run = store.get(str(writer.id))
    assert [r.id for r in store.list()] == [writer.id]
    assert set(run.manifest.checksums) == {"t.parquet", "sub/x.json"}
    assert run.summary_as(QuerySummary) == summary
    assert run.manifest.config == {"a": 1}
    assert run.verify() == []


def test_verify_reports_changed_files(tmp_path: Path) -> None:
    """A file altered after the run was written shows up in verify()."""
    store = _store(tmp_path)
    with store.create("query") as writer:
        writer.file("t.bin").write_bytes(b"data")
    run = store.get(str(writer.id))
    (run.path / "t.bin").write_bytes(b"tampered")
    assert run.verify() == ["t.bin"]


@given(n_files=st.integers(0, 5), fail_after=st.integers(0, 5), where=st.sampled_from(["write", "commit"]))
def test_interrupted_write_never_looks_complete(
    tmp_path_factory: pytest.TempPathFactory, n_files: int, fail_after: int, where: str
) -> None:
    """An exception at any point of a write (files or the final rename) leaves no listed, findable run."""
    store = _store(tmp_path_factory.mktemp("store"))
    writer = store.create("features")
    real_replace = os.replace

    def failing_replace(src: object, dst: object) -> None:
        raise BoomError("killed during rename")

    with pytest.raises(BoomError), writer:  # noqa: PT012 - the failure point is drawn by hypothesis
        for i in range(n_files):
            if where == "write" and i == fail_after:
                raise BoomError("killed while writing")
            writer.file(f"f{i}.bin").write_bytes(b"x" * i)
        if where == "commit":
            os.replace = failing_replace  # type: ignore[assignment]
            try:
                writer.commit()
            finally:
                os.replace = real_replace
        else:
            raise BoomError("killed before commit")
    assert store.list() == []
    with pytest.raises(RunNotFoundError):
        store.get(str(writer.id))
    visible = [p for p in store.root.iterdir() if not p.name.startswith(".")]
    assert visible == []


def test_killed_process_leaves_only_a_temp_folder(tmp_path: Path) -> None:
    """A writer abandoned without exit (process killed) leaves nothing outside .tmp."""
    store = _store(tmp_path)
    writer = store.create("model")
    writer.file("model.pt").write_bytes(b"weights")
    (writer.path / MANIFEST).write_text("{}")  # even a manifest in the temp folder is not a run
    assert store.list() == []
    assert writer.path.parent.name == ".tmp"


def _make(store: RunStore, kind: str, token: str, second: int, parents: tuple[RunId, ...] = ()) -> RunId:
    run_id = RunId(kind=kind, created=datetime(2026, 1, 1, 0, 0, second, tzinfo=UTC), token=token)
    folder = store.root / str(run_id)
    folder.mkdir(parents=True)
    manifest = Manifest(
        id=run_id,
        kind=kind,
        created=run_id.created,
        parents=parents,
        config={},
        package_version="0",
        git_commit=None,
        status="complete",
    )
    (folder / MANIFEST).write_text(json.dumps(manifest.to_data()))
    return run_id


def test_lookup_by_prefix_latest_and_kind(tmp_path: Path) -> None:
    """A unique prefix finds a run; latest() is the newest of a kind; a wrong kind is named."""
    store = _store(tmp_path)
    q1 = _make(store, "query", "aaaa", 1)
    q2 = _make(store, "query", "bbbb", 2)
    f1 = _make(store, "features", "cccc", 3, parents=(q2,))
    assert store.get("features").id == f1
    assert store.latest("query").id == q2
    assert store.resolve(None, "query").id == q2
    assert store.resolve(str(q1)[:-2], "query").id == q1
    with pytest.raises(RunKindError) as info:
        store.get(str(f1), kind="query")
    assert str(info.value) == f"run {f1} is a features run; this needs a query run"


def test_ambiguous_prefix_lists_candidates(tmp_path: Path) -> None:
    """A prefix matching several runs is an error that lists them."""
    store = _store(tmp_path)
    q1 = _make(store, "query", "aaaa", 1)
    q2 = _make(store, "query", "bbbb", 2)
    with pytest.raises(AmbiguousRunError) as info:
        store.get("query-2026")
    assert str(info.value) == f"'query-2026' matches 2 runs: {q1}, {q2}; give more of the id"


def test_unknown_id_and_missing_kind(tmp_path: Path) -> None:
    """Unknown ids and kinds without runs give errors that say what to do."""
    store = _store(tmp_path)
    with pytest.raises(RunNotFoundError) as info:
        store.get("nope")
    assert str(info.value) == "no run matches 'nope'; `lstm-adv runs list` shows the runs"
    with pytest.raises(RunNotFoundError) as info:
        store.latest("model")
    assert str(info.value) == "there is no model run yet; create one first (see `lstm-adv --help`)"


def test_lineage_walks_parents(tmp_path: Path) -> None:
    """lineage() returns the run and all its ancestors."""
    store = _store(tmp_path)
    q = _make(store, "query", "aaaa", 1)
    f = _make(store, "features", "bbbb", 2, parents=(q,))
    m = _make(store, "model", "cccc", 3, parents=(f,))
    assert [r.id for r in store.lineage(store.get(str(m)))] == [m, f, q]


def test_unreadable_manifest_is_skipped_not_fatal(tmp_path: Path) -> None:
    """A run folder with a corrupt manifest is skipped by list() instead of breaking it."""
    store = _store(tmp_path)
    good = _make(store, "query", "aaaa", 1)
    bad = store.root / "query-20260101-000002-bbbb"
    bad.mkdir()
    (bad / MANIFEST).write_text("{not json")
    assert [r.id for r in store.list()] == [good]


def test_run_folders_and_files_are_readable_by_their_owner_only(tmp_path: Path) -> None:
    """Runs hold patient-level data: the store's folders are 0700 and every file 0600, the manifest included."""
    store = _store(tmp_path)
    with store.create("query") as writer:
        writer.file("stays.parquet").write_bytes(b"rows")
        writer.file("sub/deeper/x.json").write_text("{}")
    folders = [store.root, store.root / ".tmp", writer.committed.path, *writer.committed.path.rglob("*")]
    modes = {path.name: stat.S_IMODE(path.stat().st_mode) for path in folders}
    assert modes == {
        "runs": 0o700,
        ".tmp": 0o700,
        str(writer.id): 0o700,
        "stays.parquet": 0o600,
        "sub": 0o700,
        "deeper": 0o700,
        "x.json": 0o600,
        MANIFEST: 0o600,
    }


def _interrupted(store: RunStore, second: int) -> RunId:
    run_id = _make(store, "attack", "dddd", second)
    path = store.root / str(run_id) / MANIFEST
    path.write_text(path.read_text().replace('"complete"', '"interrupted"'))
    return run_id


def test_latest_is_the_newest_complete_run_and_an_interrupted_parent_is_refused(tmp_path: Path) -> None:
    """latest()/resolve(None) skip interrupted runs; naming one as a parent says to resume it; get() still finds it."""
    store = _store(tmp_path)
    complete = _make(store, "attack", "aaaa", 1)
    interrupted = _interrupted(store, 2)
    assert store.latest("attack").id == complete
    assert store.resolve(None, "attack").id == complete
    assert store.get(str(interrupted)).manifest.status == "interrupted"
    with pytest.raises(RunStatusError) as info:
        store.resolve(str(interrupted), "attack")
    assert str(info.value) == (
        f"run {interrupted} is an interrupted attack run; only `--resume` takes it: finish it with "
        f"`lstm-adv attack --resume {interrupted}` and use the new run"
    )


def test_runs_made_within_one_second_are_ordered_by_when_they_were_made(tmp_path: Path) -> None:
    """Run ids carry whole seconds and a random token; the manifest's microseconds order runs of one second, so
    `latest` is the run made last whatever its token."""
    store = _store(tmp_path)
    made = []
    for _ in range(12):
        with store.create("attack") as writer:
            pass
        made.append(writer.id)
    assert [run.id for run in store.list("attack")] == made
    assert store.latest("attack").id == made[-1]
    assert len({run_id.created for run_id in made}) < len(made)  # several shared a second (else nothing is shown)


def test_only_interrupted_runs_of_a_kind_is_no_default(tmp_path: Path) -> None:
    """With nothing but an interrupted run of a kind there is no default, and the message says how to finish it."""
    store = _store(tmp_path)
    interrupted = _interrupted(store, 2)
    with pytest.raises(RunNotFoundError) as info:
        store.latest("attack")
    assert str(info.value) == (
        f"there is no complete attack run yet; {interrupted} is interrupted: finish it with "
        f"`lstm-adv attack --resume {interrupted}`"
    )


@pytest.mark.parametrize("ref", ["/elsewhere/runs/query-20260101-000001-aaaa", "../other/runs/x", ".tmp"])
def test_a_path_is_not_a_run_id(tmp_path: Path, ref: str) -> None:
    """Runs are found by id or prefix inside the store only: a path (even to a real run elsewhere) is refused."""
    store = _store(tmp_path)
    with pytest.raises(RunNotFoundError) as info:
        store.get(ref)
    assert str(info.value) == (
        f"{ref!r} is not a run id; give a run id or a unique prefix of one (runs of another folder: --home "
        "<folder>); `lstm-adv runs list` shows the runs"
    )


def test_a_full_disk_while_writing_is_one_line_and_leaves_nothing(tmp_path: Path) -> None:
    """ENOSPC inside a writer becomes one RunStoreError naming the run and the fix; no folder remains."""
    store = _store(tmp_path)
    with pytest.raises(RunStoreError) as info, store.create("model") as writer:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert str(info.value) == (
        f"no space left on device while writing model run {writer.id}: nothing of it was kept; free some space "
        f"for {store.root} and run the command again"
    )
    assert list(store.root.iterdir()) == [store.root / ".tmp"]
    assert list((store.root / ".tmp").iterdir()) == []


def test_a_killed_writer_leaves_a_stale_run_that_clean_removes(tmp_path: Path) -> None:
    """SIGKILL leaves runs/.tmp/<id>; stale() finds it (a live writer's folder is not stale) and clean() removes it."""
    store = _store(tmp_path)
    script = (
        "import os, signal, sys; from pathlib import Path; from lstm_adv.results.store import RunStore\n"
        "w = RunStore(Path(sys.argv[1])).create('model'); w.file('model.pt').write_bytes(b'x')\n"
        "os.kill(os.getpid(), signal.SIGKILL)"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    killed = subprocess.run([sys.executable, "-c", script, str(store.root)], env=env, check=False, timeout=60)
    assert killed.returncode == -signal.SIGKILL
    live = store.create("model")
    (stale,) = store.stale()
    assert stale.name.startswith("model-")
    assert stale != live.path
    assert store.clean() == [stale.name]
    assert not stale.exists()
    assert store.stale() == []
    assert live.path.is_dir()
    live.discard()


def test_clean_reports_only_what_it_removed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stale folder that could not be removed (its files belong to someone else) is not in clean()'s answer."""
    store = _store(tmp_path)
    stale = store.root / ".tmp" / "model-20260101-000000-abcd"
    stale.mkdir(parents=True)
    monkeypatch.setattr("lstm_adv.results.store.shutil.rmtree", lambda *args, **kwargs: None)
    assert store.clean() == []
    assert store.stale() == [stale]


def test_an_overlong_or_unprintable_run_id_is_one_line(tmp_path: Path) -> None:
    """A 5,000-character id (longer than any file name) or one holding control characters is refused in one line,
    never an OSError from the file system."""
    store = RunStore(tmp_path / "runs")
    with pytest.raises(RunNotFoundError) as info:
        store.get("a" * 5000)
    assert str(info.value) == (
        f"{'a' * 40 + '…'!r} is not a run id (run ids are at most 128 printable characters); give a run id or a "
        "unique prefix of one; `lstm-adv runs list` shows the runs"
    )
    with pytest.raises(RunNotFoundError, match="is not a run id"):
        store.get("model\x00")
