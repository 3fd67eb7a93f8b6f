"""The run store: every stage writes one run folder, atomically, under ``<home>/runs``.

A run is written into ``runs/.tmp/<id>`` and renamed into place only after its manifest
(with the checksums of every file) is on disk, so a crash or Ctrl-C never leaves a folder
that looks complete.
"""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import json
import logging
import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import attrs

import lstm_adv
from lstm_adv.domain.errors import (
    AmbiguousRunError,
    DataError,
    RunIdError,
    RunKindError,
    RunNotFoundError,
    RunStoreError,
)
from lstm_adv.domain.run_id import KINDS, RunId
from lstm_adv.results.manifest import Manifest
from lstm_adv.results.summaries import SUMMARY_TYPES, RunSummary

log = logging.getLogger(__name__)
T = TypeVar("T")

MANIFEST = "manifest.json"
_TMP = ".tmp"


@attrs.frozen
class Run:
    """A finished run: its manifest and its folder."""

    manifest: Manifest
    path: Path

    @property
    def id(self) -> RunId:
        """The run's id."""
        return self.manifest.id

    @property
    def kind(self) -> str:
        """The run's kind (``query``, ``features``, …)."""
        return self.manifest.kind

    def summary_as(self, kind: type[T]) -> T:
        """The run's summary as ``kind``; a run of another kind, or without a summary, is a :class:`DataError`."""
        summary = self.manifest.summary
        if not isinstance(summary, kind):
            what = "no summary" if summary is None else f"a {type(summary).__name__}"
            raise DataError(f"run {self.id} ({self.kind}) holds {what}, not a {kind.__name__}; re-run its stage")
        return summary

    def file(self, name: str) -> Path:
        """Path of a stored file; a missing file is a :class:`DataError` naming the run."""
        path = self.path / name
        if not path.exists():
            raise DataError(f"run {self.id} has no file {name!r}; the run folder {self.path} is incomplete")
        return path

    def verify(self) -> list[str]:
        """Names of files whose checksum no longer matches the manifest (empty when intact)."""
        bad = []
        for name, expected in self.manifest.checksums.items():
            path = self.path / name
            if not path.exists() or sha256_file(path) != expected:
                bad.append(name)
        return bad


class RunWriter:
    """Collects a run's files in a temporary folder; :meth:`commit` publishes them atomically."""

    def __init__(self, store: RunStore, manifest: Manifest) -> None:
        self._store = store
        self._manifest = manifest
        self.path = store.root / _TMP / str(manifest.id)
        self.summary: RunSummary | None = manifest.summary
        self.committed: Run | None = None

    @property
    def id(self) -> RunId:
        """The id the run will have."""
        return self._manifest.id

    def file(self, name: str) -> Path:
        """Where to write file ``name`` (sub-folders are created)."""
        path = self.path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def commit(self, *, status: str = "complete") -> Run:
        """Checksum every file, write the manifest, and rename the folder into place."""
        checksums = {
            str(p.relative_to(self.path)): sha256_file(p)
            for p in sorted(self.path.rglob("*"))
            if p.is_file() and p.name != MANIFEST
        }
        manifest = attrs.evolve(self._manifest, status=status, checksums=checksums, summary=self.summary)
        _write_json(self.path / MANIFEST, manifest.to_data())
        final = self._store.root / str(manifest.id)
        os.replace(self.path, final)
        _fsync_dir(self._store.root)
        self.committed = Run(manifest=manifest, path=final)
        return self.committed

    def discard(self) -> None:
        """Remove the temporary folder; nothing of the run remains."""
        shutil.rmtree(self.path, ignore_errors=True)

    def __enter__(self) -> RunWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None and self.committed is None:
            self.commit()
        elif exc_type is not None:
            self.discard()


class RunStore:
    """Runs under one root folder: create, look up by id, prefix or kind, list."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def create(
        self,
        kind: str,
        *,
        parents: Sequence[RunId] = (),
        config: Mapping[str, Any] | None = None,
        summary: RunSummary | None = None,
    ) -> RunWriter:
        """Start writing a new run of ``kind``; use as a context manager.

        Set :attr:`RunWriter.summary` (the summary class of ``kind``) before the run is committed.
        """
        if kind in SUMMARY_TYPES and summary is not None and not isinstance(summary, SUMMARY_TYPES[kind]):
            raise RunStoreError(f"a {kind} run needs a {SUMMARY_TYPES[kind].__name__} summary")
        run_id = RunId.new(kind)
        while (self.root / str(run_id)).exists() or (self.root / _TMP / str(run_id)).exists():
            run_id = RunId.new(kind)
        manifest = Manifest(
            id=run_id,
            kind=kind,
            created=datetime.now(UTC).replace(microsecond=0),
            parents=tuple(parents),
            config=dict(config or {}),
            package_version=lstm_adv.__version__,
            git_commit=_git_commit(),
            status="complete",
            summary=summary,
        )
        try:
            (self.root / _TMP / str(run_id)).mkdir(parents=True)
        except OSError as exc:
            raise RunStoreError(f"cannot create a run under {self.root}: {exc.strerror}") from None
        return RunWriter(self, manifest)

    def list(self, kind: str | None = None) -> list[Run]:
        """Finished runs, oldest first, optionally of one kind."""
        if not self.root.is_dir():
            return []
        runs = []
        for child in self.root.iterdir():
            if child.name.startswith(".") or not (child / MANIFEST).is_file():
                continue
            try:
                run = self._load(child)
            except RunStoreError as exc:
                log.warning("skipping %s: %s", child, exc)
                continue
            if kind is None or run.kind == kind:
                runs.append(run)
        return sorted(runs, key=lambda r: r.id)

    def get(self, ref: str, *, kind: str | None = None) -> Run:
        """The run whose id is ``ref`` or starts with it; ``kind`` checks what it is."""
        ref = ref.strip()
        if not ref:
            raise RunNotFoundError("an empty run id matches nothing; `lstm-adv runs list` shows the runs")
        exact = self.root / ref
        if (exact / MANIFEST).is_file() and not ref.startswith("."):
            run = self._load(exact)
        else:
            candidates = [r for r in self.list() if str(r.id).startswith(ref)]
            if not candidates:
                raise RunNotFoundError(f"no run matches {ref!r}; `lstm-adv runs list` shows the runs")
            if len(candidates) > 1:
                names = ", ".join(str(r.id) for r in candidates[:10])
                more = f" and {len(candidates) - 10} more" if len(candidates) > 10 else ""
                raise AmbiguousRunError(f"{ref!r} matches {len(candidates)} runs: {names}{more}; give more of the id")
            run = candidates[0]
        if kind is not None and run.kind != kind:
            raise RunKindError(f"run {run.id} is a {run.kind} run; this needs a {kind} run")
        return run

    def latest(self, kind: str) -> Run:
        """The newest finished run of ``kind``."""
        if kind not in KINDS:
            raise RunIdError(f"unknown run kind {kind!r}; kinds: {', '.join(KINDS)}")
        runs = self.list(kind)
        if not runs:
            raise RunNotFoundError(f"there is no {kind} run yet; create one first (see `lstm-adv --help`)")
        return runs[-1]

    def resolve(self, ref: str | None, kind: str) -> Run:
        """``ref`` (id or prefix) if given, else the latest run of ``kind``."""
        return self.get(ref, kind=kind) if ref else self.latest(kind)

    def lineage(self, run: Run) -> builtins.list[Run]:
        """``run`` and its ancestors, breadth first; missing ancestors are skipped."""
        seen: dict[RunId, Run] = {run.id: run}
        queue = [run]
        while queue:
            current = queue.pop(0)
            for parent in current.manifest.parents:
                if parent in seen:
                    continue
                with contextlib.suppress(RunNotFoundError):
                    seen[parent] = self.get(str(parent))
                    queue.append(seen[parent])
        return list(seen.values())

    def _load(self, folder: Path) -> Run:
        path = folder / MANIFEST
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise RunStoreError(f"manifest {path} is unreadable: {exc}") from None
        try:
            manifest = Manifest.from_data(data)
        except RunStoreError:
            raise
        except Exception as exc:  # cattrs raises exception groups
            raise RunStoreError(f"manifest {path} is unreadable: {exc}") from None
        return Run(manifest=manifest, path=folder)


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _write_json(path: Path, data: Any) -> None:
    with path.open("w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2, sort_keys=True)
        handle.flush()
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _git_commit() -> str | None:
    """The commit of the source tree the package runs from, if it is a git checkout."""
    source = Path(__file__).resolve().parents[2]
    if not (source / ".git").exists():
        return None
    try:
        result = subprocess.run(
            ["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = result.stdout.strip()
    return commit if result.returncode == 0 and commit else None
