"""The GPU path runs with only what GPU machines have, and bench/gpu_check.sh keeps working (on a CPU).

GPU machines have torch, numpy, pandas, pyarrow, attrs, typer, rich, matplotlib, tensorboard, pytest and
hypothesis, but not cattrs, optuna, the database packages or the report stack. These tests run Python
with those packages blocked (a ``sitecustomize`` that makes them look absent), as on the GPU machines.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MISSING_ON_GPU_MACHINES = (
    "cattrs",
    "optuna",
    "psycopg",
    "psycopg_binary",
    "pgserver",
    "yaml",
    "sklearn",
    "jupytext",
    "nbclient",
    "nbformat",
    "ipykernel",
    "jupyter_client",
    "IPython",
    "pypandoc",
    "typst",
)
# ``None`` in sys.modules is what an absent package looks like to both ``import`` (ModuleNotFoundError) and
# ``importlib.util.find_spec`` (None), which torch itself uses to probe for optional packages.
BLOCKER = f"""
import sys

for name in {MISSING_ON_GPU_MACHINES!r}:
    sys.modules[name] = None
"""
GPU_PATH = """
import json
import sys

import torch

from lstm_adv import config, devices
from lstm_adv.attacks import L1Attack, L1Settings, PgdAttack, PgdSettings
from lstm_adv.models import BiLSTM, Hyperparameters
from lstm_adv.training_loop import SplitTensors, fit_model

try:
    import cattrs
except ImportError:
    blocked = True
else:
    blocked = False
params = Hyperparameters(
    hidden_size=8, num_layers=2, lstm_activation="tanh", dropout=0.2, fc_size=8, fc_activation="relu",
    optimizer="adam", learning_rate=1e-3, batch_size=16,
)
x, y = torch.rand(32, 48, 19), torch.randint(0, 2, (32,))
fit = fit_model(SplitTensors(x, y), SplitTensors(x, y), params, config.ModelConfig(), max_epochs=1)
attack = L1Attack(fit.model, L1Settings(max_iterations=3, search_steps=1), batch_size="auto")
result = attack.run(x, y)
delta = PgdAttack(fit.model, PgdSettings(eps=0.05, iterations=2)).perturb(x, y)
print(json.dumps({
    "blocked": blocked,
    "epochs": len(fit.history),
    "attacked": result.n,
    "batch_size": attack.batch_size,
    "delta_shape": list(delta.shape),
    "modules": sorted(m for m in sys.modules if m.split(".")[0] in ("pandas", "pyarrow", "matplotlib")),
}))
"""


@pytest.fixture
def gpu_machine_env(tmp_path: Path) -> dict[str, str]:
    """The environment of a Python that cannot import what GPU machines lack."""
    folder = tmp_path / "blocker"
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(BLOCKER)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(folder), env.get("PYTHONPATH")) if p)
    env["OMP_NUM_THREADS"] = "1"
    return env


def test_the_gpu_path_imports_and_runs_without_the_packages_gpu_machines_lack(gpu_machine_env: dict[str, str]) -> None:
    """Models, attacks (batch "auto" included), the training loop, config and devices import and run a tiny
    training epoch, L1 attack and PGD attack with cattrs, optuna, the database and report packages blocked."""
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(GPU_PATH)],
        cwd=ROOT,
        env=gpu_machine_env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report == {
        "blocked": True,
        "epochs": 1,
        "attacked": 32,
        "batch_size": 256,
        "delta_shape": [32, 48, 19],
        "modules": [],
    }


@pytest.mark.slow
def test_the_gpu_check_runs_quickly_on_a_cpu_and_writes_every_figure(
    gpu_machine_env: dict[str, str], tmp_path: Path
) -> None:
    """``bench/gpu_check.sh --device cpu --quick`` (the gpu-marked tests collected and skipped, every benchmark
    part at small sizes) succeeds without the packages GPU machines lack and writes one JSON with every part."""
    out = tmp_path / "gpu.json"
    env = {**gpu_machine_env, "PYTHON": sys.executable}
    done = subprocess.run(
        [str(ROOT / "bench" / "gpu_check.sh"), "--device", "cpu", "--quick", "--threads", "1", "--out", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
        check=False,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    report = json.loads(out.read_text())
    parts = ("tests", "batch_probe", "cost_ratio", "cudnn_vs_native", "training", "full_attack")
    assert set(parts) <= set(report)
    assert report["device"] == "cpu"
    assert report["quick"] is True
    assert "interrupted" not in report
    tests = report["tests"]
    assert tests["tests"] > 0
    assert (tests["failures"], tests["errors"], tests["passed"]) == (0, 0, 0)  # every gpu test skips on a CPU
    assert report["batch_probe"] == {"batch_size": 256, "probed": False, "seconds": report["batch_probe"]["seconds"]}
    assert {"forward_backward_ms", "ista", "fista", "adam"} <= set(report["cost_ratio"])
    assert {"cudnn_ms", "native_ms", "native_over_cudnn"} <= set(report["cudnn_vs_native"])
    for epoch in ("clean_epoch", "adversarial_epoch"):
        assert {"full_seconds", "extrapolated", "measured_units"} <= set(report["training"][epoch])
    attack = report["full_attack"]
    assert (attack["samples"], attack["iterations"], attack["batch_size"]) == (512, 40, 256)
    assert {"full_seconds", "extrapolated", "rate", "success_rate"} <= set(attack)
    assert "full attack" in done.stdout


def test_the_gpu_path_tests_and_their_fixtures_run_without_the_packages_gpu_machines_lack(
    gpu_machine_env: dict[str, str], tmp_path: Path
) -> None:
    """A test of a GPU-path file runs, session fixtures (conftest.py) included, with those packages blocked:
    on a GPU machine the gpu-marked tests run instead of skipping, and need the same."""
    test = "tests/test_devices.py::test_auto_on_a_cpu_is_the_default_without_probing"
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--basetemp", str(tmp_path / "t"), test],
        cwd=ROOT,
        env=gpu_machine_env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert "1 passed" in done.stdout
