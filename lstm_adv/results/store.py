"""The run store: every stage writes one run folder, atomically, under ``<home>/runs``.

A run is written into ``runs/.tmp/<id>`` and renamed into place only after its manifest
(with the checksums of every file) is on disk, so a crash or Ctrl-C never leaves a folder
that looks complete. While a run is written its process holds a lock on ``runs/.tmp/<id>.lock``;
a temporary folder whose lock nobody holds was left by a killed process (:meth:`RunStore.stale`,
removed by :meth:`RunStore.clean`).

Runs hold credentialed, patient-level data: run folders are readable by their owner only (0700,
files 0600). A stored file is checked against its manifest's checksum when a stage reads it
(:meth:`Run.file`; each file is hashed once per process). Only complete runs are parents:
:meth:`RunStore.resolve` and :meth:`RunStore.latest` never pick an interrupted run.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import stat
import subprocess
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import attrs

from lstm_adv.domain.errors import (
    AmbiguousRunError,
    ChecksumError,
    DataError,
    LstmAdvError,
    RunIdError,
    RunKindError,
    RunNotFoundError,
    RunStatusError,
    RunStoreError,
)
from lstm_adv.domain.run_id import KINDS, RunId, a_kind
from lstm_adv.results.manifest import Manifest
from lstm_adv.results.summaries import SUMMARY_TYPES, RunSummary

log = logging.getLogger(__name__)
T = TypeVar("T")

MANIFEST = "manifest.json"
_TMP = ".tmp"
_LOCK = ".lock"
FOLDER_MODE = 0o700
FILE_MODE = 0o600


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

    @property
    def complete(self) -> bool:
        """Whether the run finished (an interrupted run is only good for ``--resume``)."""
        return self.manifest.status == "complete"

    def file(self, name: str) -> Path:
        """Path of a stored file, checked against the manifest's checksum.

        A missing file is a :class:`DataError`, a changed one a :class:`ChecksumError`, both naming the run.
        """
        path = self.path / name
        if not path.exists():
            raise DataError(f"run {self.id} has no file {name!r}; the run folder {self.path} is incomplete")
        expected = self.manifest.checksums.get(name)
        if expected is not None and path.is_file() and cached_sha256(path) != expected:
            raise ChecksumError(
                f"run {self.id}: {name} no longer matches the checksum in its manifest (it changed after the run "
                "was written); restore the file or re-run the stage that wrote it"
            )
        return path

    def verify(self) -> list[str]:
        """Names of files whose checksum no longer matches the manifest (empty when intact)."""
        bad = []
        for name, expected in self.manifest.checksums.items():
            path = self.path / name
            if not path.is_file() or cached_sha256(path) != expected:
                bad.append(name)
        return bad

    def unlisted(self) -> list[str]:
        """Files in the run folder that its manifest does not list (put there after the run was written)."""
        listed = set(self.manifest.checksums) | {MANIFEST}
        return sorted(
            name
            for name in (p.relative_to(self.path).as_posix() for p in self.path.rglob("*") if p.is_file())
            if name not in listed
        )

    def check_complete(self) -> Run:
        """This run if it is complete; an interrupted run is a :class:`RunStatusError` saying how to resume it."""
        if self.complete:
            return self
        raise RunStatusError(
            f"run {self.id} is an {self.manifest.status} {self.kind} run; only `--resume` takes it: "
            f"finish it with `lstm-adv {self.kind} --resume {self.id}` and use the new run"
        )


class RunWriter:
    """Collects a run's files in a temporary folder; :meth:`commit` publishes them atomically."""

    def __init__(self, store: RunStore, manifest: Manifest, lock: int) -> None:
        self._store = store
        self._manifest = manifest
        self._lock: int | None = lock
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
        """Close the files to others, checksum them, write the manifest, and rename the folder into place."""
        _owner_only(self.path)
        checksums = {
            p.relative_to(self.path).as_posix(): sha256_file(p)
            for p in sorted(self.path.rglob("*"))
            if p.is_file() and p.name != MANIFEST
        }
        manifest = attrs.evolve(self._manifest, status=status, checksums=checksums, summary=self.summary)
        _write_json(self.path / MANIFEST, manifest.to_data())
        final = self._store.root / str(manifest.id)
        os.replace(self.path, final)
        _fsync_dir(self._store.root)
        self.committed = Run(manifest=manifest, path=final)
        self._unlock()
        return self.committed

    def discard(self) -> None:
        """Remove the temporary folder; nothing of the run remains."""
        shutil.rmtree(self.path, ignore_errors=True)
        self._unlock()

    def _unlock(self) -> None:
        if self._lock is not None:
            with contextlib.suppress(OSError):
                self.path.with_name(self.path.name + _LOCK).unlink()
            os.close(self._lock)  # closing releases the lock
            self._lock = None

    def __enter__(self) -> RunWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None and self.committed is None:
            try:
                self.commit()
            except OSError as error:
                self.discard()
                raise self._not_written(error) from None
        elif exc_type is not None:
            self.discard()
            if isinstance(exc, OSError) and not isinstance(exc, LstmAdvError):
                raise self._not_written(exc) from None

    def _not_written(self, error: OSError) -> RunStoreError:
        """One line for an operating-system error that stopped the run (disk full, read-only, name too long)."""
        reason = (error.strerror or str(error) or type(error).__name__).lower()
        where = f" ({error.filename})" if error.filename else ""
        return RunStoreError(
            f"{reason}{where} while writing {self._manifest.kind} run {self.id}: nothing of it was kept; "
            f"{_fix(error.errno, self._store.root)}"
        )


#: The longest run id a lookup takes (ids are ~30 characters; a longer one is no id, and the file system
#: would refuse it as a name).
_MAX_REF = 128


def _check_unique(runs: list[Run]) -> None:
    """One line when two folders hold the same run id (a run folder copied under another name)."""
    folders: dict[RunId, list[Path]] = {}
    for run in runs:
        folders.setdefault(run.id, []).append(run.path)
    for run_id, paths in folders.items():
        if len(paths) < 2:
            continue
        copies = sorted(p for p in paths if p.name != str(run_id)) or sorted(paths)[1:]
        named = " and ".join(str(p) for p in sorted(paths))
        raise RunStoreError(
            f"run id {run_id} is held by {len(paths)} folders: {named}; a run's folder is named by its id, so "
            f"remove the copy ({', '.join(str(p) for p in copies)}) or move it to another home"
        )


def _creation_order(run: Run) -> tuple[datetime, RunId]:
    """Oldest first: the manifest's creation time (microseconds; ids carry whole seconds only), then the id."""
    return (run.manifest.created, run.id)


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
            raise RunStoreError(f"{a_kind(kind)} run needs a {SUMMARY_TYPES[kind].__name__} summary")
        run_id = RunId.new(kind)
        while (self.root / str(run_id)).exists() or (self.root / _TMP / str(run_id)).exists():
            run_id = RunId.new(kind)
        manifest = Manifest(
            id=run_id,
            kind=kind,
            created=datetime.now(UTC),  # to the microsecond: orders runs made within one second
            parents=tuple(parents),
            config=dict(config or {}),
            package_version=_package_version(),
            git_commit=_git_commit(),
            status="complete",
            summary=summary,
        )
        try:
            temporary = self._temporary_root()
            lock = _lock(temporary / f"{run_id}{_LOCK}", wait=True)
            (temporary / str(run_id)).mkdir(mode=FOLDER_MODE)
        except OSError as exc:
            raise RunStoreError(
                f"cannot create a run under {self.root}: {exc.strerror}; {_fix(exc.errno, self.root)}"
            ) from None
        assert lock is not None
        return RunWriter(self, manifest, lock)

    def _temporary_root(self) -> Path:
        """``runs/.tmp``, made (owner only) when missing."""
        self.root.parent.mkdir(parents=True, exist_ok=True)
        for folder in (self.root, self.root / _TMP):
            with contextlib.suppress(FileExistsError):
                folder.mkdir(mode=FOLDER_MODE)
        return self.root / _TMP

    def stale(self) -> builtins.list[Path]:
        """Temporary run folders that no process is writing (left by a killed command), oldest first."""
        temporary = self.root / _TMP
        if not temporary.is_dir():
            return []
        found = []
        for folder in sorted(p for p in temporary.iterdir() if p.is_dir() and not p.is_symlink()):
            lock = _lock(temporary / f"{folder.name}{_LOCK}", wait=False)
            if lock is not None:
                os.close(lock)
                found.append(folder)
        return found

    def clean(self) -> builtins.list[str]:
        """Remove the stale temporary runs (see :meth:`stale`); returns the names of those actually gone.

        A folder that could not be removed (its files are not yours to delete) is logged and left out.
        """
        removed = []
        for folder in self.stale():
            lock = _lock(folder.with_name(folder.name + _LOCK), wait=False)
            if lock is None:  # a writer took it meanwhile
                continue
            try:
                shutil.rmtree(folder, ignore_errors=True)
                with contextlib.suppress(OSError):
                    folder.with_name(folder.name + _LOCK).unlink()
            finally:
                os.close(lock)
            if folder.exists():
                log.warning("could not remove the stale temporary run %s (check who owns its files)", folder)
                continue
            removed.append(folder.name)
        return removed

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
        _check_unique(runs)
        return sorted(runs, key=_creation_order)

    def get(self, ref: str, *, kind: str | None = None) -> Run:
        """The run whose id is ``ref`` or starts with it; ``kind`` checks what it is."""
        ref = ref.strip()
        if not ref:
            raise RunNotFoundError("an empty run id matches nothing; `lstm-adv runs list` shows the runs")
        if len(ref) > _MAX_REF or not ref.isprintable():
            shown = ref[:40] + "…" if len(ref) > 40 else ref
            raise RunNotFoundError(
                f"{shown!r} is not a run id (run ids are at most {_MAX_REF} printable characters); give a run id or a "
                "unique prefix of one; `lstm-adv runs list` shows the runs"
            )
        if ref.startswith(".") or "/" in ref or os.sep in ref or (os.altsep and os.altsep in ref):
            raise RunNotFoundError(
                f"{ref!r} is not a run id; give a run id or a unique prefix of one (runs of another folder: "
                "--home <folder>); `lstm-adv runs list` shows the runs"
            )
        exact = self.root / ref
        if (exact / MANIFEST).is_file():
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
            raise RunKindError(f"run {run.id} is {a_kind(run.kind)} run; this needs {a_kind(kind)} run")
        return run

    def get_complete(self, ref: str, *, kind: str | None = None) -> Run:
        """Like :meth:`get`, for a run used as a parent: an interrupted run is a :class:`RunStatusError`."""
        return self.get(ref, kind=kind).check_complete()

    def latest(self, kind: str) -> Run:
        """The newest complete run of ``kind`` (interrupted runs are never a default)."""
        if kind not in KINDS:
            raise RunIdError(f"unknown run kind {kind!r}; kinds: {', '.join(KINDS)}")
        runs = self.list(kind)
        complete = [run for run in runs if run.complete]
        if complete:
            return complete[-1]
        if runs:
            last = runs[-1]
            raise RunNotFoundError(
                f"there is no complete {kind} run yet; {last.id} is {last.manifest.status}: finish it with "
                f"`lstm-adv {kind} --resume {last.id}`"
            )
        raise RunNotFoundError(f"there is no {kind} run yet; create one first (see `lstm-adv --help`)")

    def resolve(self, ref: str | None, kind: str) -> Run:
        """``ref`` (id or prefix) if given, else the latest run of ``kind``; either way a complete run."""
        return self.get_complete(ref, kind=kind) if ref else self.latest(kind)

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


_DIGESTS: dict[tuple[str, int, int, int, int], str] = {}


def cached_sha256(path: Path) -> str:
    """:func:`sha256_file`, computed once per process for each version of a file (path, inode, size, times)."""
    info = path.stat()
    key = (str(path.absolute()), info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)
    if key not in _DIGESTS:
        _DIGESTS[key] = sha256_file(path)
    return _DIGESTS[key]


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _owner_only(folder: Path) -> None:
    """Make ``folder`` and everything in it readable by its owner only (folders 0700, files 0600)."""
    for path in [folder, *folder.rglob("*")]:
        if path.is_symlink():
            continue
        mode = FOLDER_MODE if path.is_dir() else FILE_MODE
        if stat.S_IMODE(path.stat().st_mode) != mode:
            path.chmod(mode)


def _lock(path: Path, *, wait: bool) -> int | None:
    """An open descriptor holding an exclusive lock on ``path`` (made owner-only), or None when it is held."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, FILE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _fix(code: int | None, root: Path) -> str:
    """What to do about an operating-system error while writing under ``root``."""
    if code in (errno.ENOSPC, errno.EDQUOT):
        return f"free some space for {root} and run the command again"
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"make {root} writable for you, or choose another --home"
    if code == errno.ENAMETOOLONG:
        return "choose a shorter --home"
    return "run the command again"


def _write_json(path: Path, data: Any) -> None:
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE), "w", encoding="utf-8") as handle:
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


def _package_version() -> str:
    """The installed lstm-adv's version (read from its metadata: the store does not import the package root)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lstm-adv")
    except PackageNotFoundError:
        return "0.0.0+unknown"
