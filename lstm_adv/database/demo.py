"""The MIMIC-III Clinical Database Demo v1.4 shipped with the toolkit (ODbL v1.0; see its README).

``resources/mimic3_demo/manifest.toml`` lists each file's table, row count and SHA-256; every file
is checked against it before anything is loaded.
"""

from __future__ import annotations

import logging
import tomllib
from pathlib import Path
from typing import Any

import attrs
import psycopg

from lstm_adv.database.loader import TableSource, load_tables
from lstm_adv.domain.errors import DataError
from lstm_adv.resources import resource
from lstm_adv.results.store import sha256_file

log = logging.getLogger(__name__)

DEMO_FOLDER = "mimic3_demo"
_REINSTALL = "reinstall lstm-adv"


@attrs.frozen
class DemoFile:
    """One shipped table file as the manifest describes it."""

    table: str
    name: str
    rows: int = attrs.field(validator=attrs.validators.ge(0))
    sha256: str = attrs.field(validator=attrs.validators.matches_re(r"[0-9a-f]{64}"))

    @classmethod
    def from_entry(cls, entry: dict[str, Any]) -> DemoFile:
        """Build from one ``[[file]]`` table of the manifest."""
        return cls(table=entry["table"], name=entry["name"], rows=entry["rows"], sha256=entry["sha256"])


def demo_data_dir() -> Path:
    """The folder of the shipped demo files."""
    return Path(str(resource(DEMO_FOLDER)))


def demo_files() -> tuple[DemoFile, ...]:
    """The shipped manifest's entries, in load order."""
    text = resource(DEMO_FOLDER).joinpath("manifest.toml").read_text(encoding="utf-8")
    return tuple(DemoFile.from_entry(entry) for entry in tomllib.loads(text)["file"])


def verify_demo(data_dir: Path | None = None) -> dict[str, Path]:
    """Check every demo file in ``data_dir`` (default: the shipped folder) against the manifest.

    Returns table name -> file. Raises :class:`DataError` naming the first missing or corrupt file.
    """
    folder = data_dir or demo_data_dir()
    found: dict[str, Path] = {}
    for entry in demo_files():
        path = folder / entry.name
        if not path.is_file():
            raise DataError(f"demo file {entry.name} is missing from {folder}; {_REINSTALL}")
        if sha256_file(path) != entry.sha256:
            raise DataError(
                f"demo file {entry.name} is corrupt (its SHA-256 does not match the shipped manifest); {_REINSTALL}"
            )
        found[entry.table] = path
    return found


def load_demo(
    conn: psycopg.Connection[Any], *, schema: str = "mimiciii", data_dir: Path | None = None
) -> dict[str, int]:
    """Verify and load the demo's tables into ``schema`` (replacing them); returns rows per table.

    All or nothing: a bad file is reported before anything is written, and a failed load leaves
    the database as it was.
    """
    paths = verify_demo(data_dir)
    sources: dict[str, TableSource] = dict(paths)
    counts = load_tables(conn, schema, sources, replace=True)
    log.info("loaded the MIMIC-III demo into schema %s: %s", schema, counts)
    return counts
