"""Project files that users run: pixi.toml mirrors the nox sessions; the README's commands are what CI runs."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _nox_sessions() -> set[str]:
    text = (ROOT / "noxfile.py").read_text()
    return set(re.findall(r"@nox\.session\([^)]*\)\ndef (\w+)\(", text)) - {"lock"}


def test_pixi_toml_parses_and_mirrors_nox_sessions() -> None:
    """pixi.toml is valid TOML with a task for every nox session (lock excepted)."""
    pixi = tomllib.loads((ROOT / "pixi.toml").read_text())
    assert pixi["workspace"]["channels"] == ["conda-forge"]
    sessions = _nox_sessions()
    assert {"tests", "lint", "typecheck", "bench"} <= sessions
    assert sessions <= set(pixi["tasks"])


def test_pixi_lint_task_runs_the_same_command_as_nox() -> None:
    """The lint task checks the same paths as the nox lint session."""
    pixi = tomllib.loads((ROOT / "pixi.toml").read_text())
    nox_text = (ROOT / "noxfile.py").read_text()
    match = re.search(r"^LINTED = \(([^)]*)\)", nox_text, re.M)
    assert match is not None
    assert 'session.run("ruff", "check", *LINTED)' in nox_text
    assert 'session.run("ruff", "format", "--check", *LINTED)' in nox_text
    paths = " ".join(p.strip().strip('"') for p in match.group(1).split(",") if p.strip())
    assert pixi["tasks"]["lint"] == f"ruff check {paths} && ruff format --check {paths}"


def test_ci_runs_the_readme_test_command() -> None:
    """.ci/run runs exactly the test command in the README's quick start."""
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"## Quick start\n.*?```(?:sh|bash)?\n(.*?)```", readme, re.S)
    assert block is not None
    commands = [line for line in block.group(1).splitlines() if line.strip() and not line.startswith("#")]
    assert len(commands) == 2
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert commands[1] in ci
    assert commands[0].split(" && ")[0] in ci


def test_pixi_reports_task_renders_the_same_tests_as_nox() -> None:
    """The reports task runs exactly the nox session's report tests."""
    pixi = tomllib.loads((ROOT / "pixi.toml").read_text())
    nox_text = (ROOT / "noxfile.py").read_text()
    block = re.search(r"REPORT_TESTS = \[(.*?)\]", nox_text, re.S)
    assert block is not None
    tests = re.findall(r'"([^"]+)"', block.group(1))
    assert pixi["tasks"]["reports"] == "pytest " + " ".join(tests) + " -q"
