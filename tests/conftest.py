"""Shared fixtures. Hypothesis profiles: HYPOTHESIS_PROFILE=dev (default, fast) or ci (more examples)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest
from hypothesis import HealthCheck, settings

if TYPE_CHECKING:
    from lstm_adv.database.server import ServerInfo

settings.register_profile("dev", max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile(
    "ci", max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread() -> Iterator[None]:
    """The suite's models are tiny: one thread is fastest and is not slowed down by a busy machine."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(autouse=True, scope="session")
def _quiet_optuna() -> None:
    """Optuna logs every trial at INFO; tests read results from the study instead."""
    try:
        import optuna
    except ImportError:  # a GPU machine with only the attack's and training's dependencies (bench/gpu_check.sh)
        return
    optuna.logging.set_verbosity(optuna.logging.WARNING)


# --- embedded PostgreSQL --------------------------------------------------------------


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerInfo]:
    """An embedded PostgreSQL server in a temporary folder for the whole session, stopped at the end."""
    from lstm_adv.config import EmbeddedConfig
    from lstm_adv.database.server import start_server, stop_server

    pg_dir = tmp_path_factory.mktemp("pg") / "pg"
    info = start_server(pg_dir, EmbeddedConfig())
    yield info
    stop_server(pg_dir)


@pytest.fixture(scope="session")
def demo_dsn(pg_server: ServerInfo) -> str:
    """The DSN of ``pg_server`` with the shipped MIMIC-III demo loaded into schema ``mimiciii``."""
    from lstm_adv.database.connection import connect
    from lstm_adv.database.demo import load_demo

    with connect(pg_server.dsn) as conn:
        load_demo(conn, schema="mimiciii")
    return pg_server.dsn
