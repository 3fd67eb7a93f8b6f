"""GPU check: the gpu-marked tests, the batch-size probe, the attack's cost ratio, cuDNN against native
kernels, a training epoch at 26,000 samples and the full-scale attack, in one run of at most 8 minutes.

Run it through ``bench/gpu_check.sh`` (which bounds the whole run). Parts, in order; each adds its
figures to the JSON as soon as it finishes, so a run stopped by its time limit keeps what it measured:

1. ``tests``: ``pytest -m gpu`` over the test files of the GPU path (:data:`TESTS`), counted from JUnit XML.
2. ``batch_probe``: the batch size ``batch_size="auto"`` gives the full attack (CPU: 256; CUDA: the
   largest batch that fits in 80 % of free memory, see ``lstm_adv.devices``) and the seconds probing took.
3. ``cost_ratio``: the marginal cost of one L1 iteration (ista, fista, adam; one λ round) ÷ one
   forward+backward of the model in the same kernels, of whole runs and of the iteration loop alone
   (``bench_attack.py``'s measurement; target ista ≤ 1.10).
4. ``cudnn_vs_native``: marginal ms per ista iteration on the cuDNN path (LSTM kernel mode) and on the
   native path (eval mode, cuDNN off), and native ÷ cuDNN. On a CPU both paths run the same kernels.
5. ``training``: one clean epoch and one adaptive adversarial epoch (every row of every batch replaced
   by its PGD example against the current weights: L∞, ε 0.05, 10 iterations) over 26,000 samples.
6. ``full_attack``: 37,832 samples × 1,000 ista iterations (one λ round), hidden 128, batch "auto".

Parts 5 and 6 first time two short runs (a few batches or iterations) for a cost per unit and a fixed
cost; when the whole run does not fit the time left, a measured fraction runs and the full time is
extrapolated linearly from it (``extrapolated: true`` and ``measured_units`` in the JSON).

Data: seeded synthetic tensors (uniform in [0, 1]; the label says whether two features are high over
the last 12 hours), the model briefly trained on them so that its margins are not trivial (as in
``bench_attack.py``). ``--quick`` shrinks every size (hidden 32, 1,024 training and 512 attacked
samples, 40 iterations) so that ``--device cpu --quick`` takes about a minute.

Dependencies: torch, numpy, attrs, pytest, hypothesis. Neither this script nor the tests it runs import
cattrs, optuna, the database packages or the report stack (GPU machines do not have them).
Writes ``$OUT/gpu.json`` when ``OUT`` is set, else ``bench/results/gpu.json`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_attack

from lstm_adv.attacks import L1Attack, L1Settings, PgdAttack, PgdSettings
from lstm_adv.models import BiLSTM, Hyperparameters
from lstm_adv.training_loop import SplitTensors, train_epoch

ROOT = Path(__file__).resolve().parents[1]
#: The test files of the GPU path: they import nothing a GPU machine lacks.
TESTS = (
    "tests/test_attack_base.py",
    "tests/test_attack_pgd.py",
    "tests/test_devices.py",
    "tests/test_training_loop.py",
)
FULL = {
    "hidden": 128,
    "train_steps": 150,
    "ratio_batch": 4096,
    "ratio_iterations": 40,
    "repeats": 4,
    "train_samples": 26_000,
    "attack_samples": 37_832,
    "attack_iterations": 1000,
}
QUICK = {
    "hidden": 32,
    "train_steps": 30,
    "ratio_batch": 64,
    "ratio_iterations": 20,
    "repeats": 2,
    "train_samples": 1024,
    "attack_samples": 512,
    "attack_iterations": 40,
}
CPU_RATIO_BATCH = 256  # a CPU's cost ratio at the size bench_attack.py uses
TRAIN_BATCH = 128
PGD = PgdSettings(eps=0.05, iterations=10)
LAM, STEP = 0.01, 0.5


class Clock:
    """The run's time budget: seconds used and left."""

    def __init__(self, budget_s: float) -> None:
        self.started = time.perf_counter()
        self.budget_s = budget_s

    def used(self) -> float:
        """Seconds since the start."""
        return time.perf_counter() - self.started

    def left(self) -> float:
        """Seconds left of the budget."""
        return self.budget_s - self.used()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds ``fn`` takes, the device's queue included."""
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


# --- 1. tests --------------------------------------------------------------------------------------------


def run_tests(timeout_s: float) -> dict[str, Any]:
    """``pytest -m gpu`` over :data:`TESTS` in a child process; counts from its JUnit XML."""
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as folder:
        xml = Path(folder) / "junit.xml"
        command = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider"]
        command += ["--basetemp", str(Path(folder) / "tmp"), "--junitxml", str(xml), *TESTS]
        started = time.perf_counter()
        try:
            done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s, check=False)
        except subprocess.TimeoutExpired:
            return {"status": "timed out", "timeout_s": timeout_s}
        seconds = time.perf_counter() - started
        counts = _junit_counts(xml) if xml.exists() else {}
    output = (done.stdout + done.stderr).strip().splitlines()
    return {"exit_code": done.returncode, "seconds": seconds, **counts, "output_tail": output[-15:]}


def _junit_counts(xml: Path) -> dict[str, int]:
    root = ET.parse(xml).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    assert suite is not None
    counts = {key: int(suite.get(key, "0")) for key in ("tests", "failures", "errors", "skipped")}
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    return counts


# --- 2.–4. the attack's batch size and iteration costs ----------------------------------------------------


def batch_probe(model: nn.Module, samples: int, device: torch.device) -> dict[str, Any]:
    """The batch size "auto" gives the full attack on this device, and how long choosing it took."""
    settings = L1Settings(lam=LAM, step_size=STEP, method="ista", max_iterations=1000, search_steps=1)
    started = time.perf_counter()
    attack = L1Attack(model, settings, device=device, batch_size="auto", max_batch_size=samples)
    return {"batch_size": attack.batch_size, "probed": device.type == "cuda", "seconds": time.perf_counter() - started}


def cost_ratio(model: nn.Module, sizes: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Iteration ÷ forward+backward per method, as bench_attack.py measures it (one λ round)."""
    batch = sizes["ratio_batch"] if device.type == "cuda" or sizes is QUICK else CPU_RATIO_BATCH
    x, _ = bench_attack.synthetic_data(batch, seed=1)
    args = argparse.Namespace(ratio_iterations=sizes["ratio_iterations"], repeats=sizes["repeats"], lam=LAM, step=STEP)
    return bench_attack.cost_ratio(model, x, args, device)


def cudnn_vs_native(model: nn.Module, sizes: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Marginal ms per ista iteration with cuDNN's kernels (kernel mode) and with native ones (eval mode)."""
    x, _ = bench_attack.synthetic_data(sizes["ratio_batch"], seed=5)
    y = torch.zeros(len(x), dtype=torch.int64)
    k2 = sizes["ratio_iterations"]
    k1 = k2 // 4
    per_iteration: dict[str, list[float]] = {"cudnn": [], "native": []}
    for repeat in range(sizes["repeats"]):
        for path in per_iteration:
            short, long = (
                L1Attack(
                    model,
                    L1Settings(lam=LAM, step_size=STEP, method="ista", max_iterations=k, search_steps=1),
                    device=device,
                    batch_size=len(x),
                    include_misclassified=True,
                    cudnn=path == "cudnn",
                )
                for k in (k1, k2)
            )
            t_short, t_long = timed(lambda a=short: a.run(x, y), device), timed(lambda a=long: a.run(x, y), device)
            if repeat or sizes["repeats"] == 1:  # the first repeat warms up
                per_iteration[path].append((t_long - t_short) / (k2 - k1))
    cudnn_ms = statistics.median(per_iteration["cudnn"]) * 1e3
    native_ms = statistics.median(per_iteration["native"]) * 1e3
    out = {"batch": len(x), "cudnn_ms": cudnn_ms, "native_ms": native_ms, "native_over_cudnn": native_ms / cudnn_ms}
    if device.type != "cuda":
        out["note"] = "no cuDNN on a CPU: both paths run the native kernels"
    return out


# --- 5.–6. scaled runs: training epochs and the full attack ----------------------------------------------


def scaled_run(
    run: Callable[[int], dict[str, Any]], total: int, allowed_s: float, device: torch.device, *, probe: tuple[int, int]
) -> dict[str, Any]:
    """Time ``run(k)`` (k units of work: batches, iterations) for all ``total`` units when that fits in
    ``allowed_s``, else for as many as fit, extrapolating linearly; two short runs of ``probe`` units give
    the cost per unit and the fixed cost. ``run`` returns figures of its own, kept from the last run."""
    a, b = (min(p, total) for p in probe)
    extras: dict[str, Any] = {}
    t_a = timed(lambda: run(a), device)
    t_b = timed(lambda: extras.update(run(b)), device)
    per_unit = max((t_b - t_a) / (b - a), 1e-9) if b > a else t_b / b
    fixed = max(t_a - a * per_unit, 0.0)
    left = allowed_s - t_a - t_b
    units = total if fixed + total * per_unit <= left else min(total, math.floor((left - fixed) / per_unit))
    seconds = t_b
    if units > b:
        seconds = timed(lambda: extras.update(run(units)), device)
        per_unit = max((seconds - fixed) / units, 1e-9)
    else:
        units = b
    return {
        "units": total,
        "measured_units": units,
        "measured_seconds": seconds,
        "per_unit_ms": per_unit * 1e3,
        "fixed_seconds": fixed,
        "full_seconds": seconds if units == total else fixed + total * per_unit,
        "extrapolated": units < total,
        **extras,
    }


def training(sizes: dict[str, Any], device: torch.device, allowed_s: float) -> dict[str, Any]:
    """One clean and one adaptive adversarial epoch (PGD on every row of every batch) over the training samples."""
    x, y = bench_attack.synthetic_data(sizes["train_samples"], seed=7)
    split = SplitTensors(x.to(device), y.to(device))
    torch.manual_seed(0)
    model = BiLSTM(_params(sizes["hidden"])).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    attack = PgdAttack(model, PGD, device=device, batch_size=1024)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    batches = math.ceil(len(y) / TRAIN_BATCH)

    def epoch(adversarial: bool) -> Callable[[int], dict[str, Any]]:
        transform = (lambda xb, yb, rows: xb + attack.perturb(xb, yb)) if adversarial else None

        def run(k: int) -> dict[str, Any]:
            part = order[: k * TRAIN_BATCH]
            loss = train_epoch(
                model, optimizer, nn.CrossEntropyLoss(), split, TRAIN_BATCH, order=part, clip=5.0, transform=transform
            )
            return {"loss": loss}

        return run

    epoch(True)(1)  # warm-up: cuDNN plans for both shapes
    clean = scaled_run(epoch(False), batches, allowed_s / 6, device, probe=(2, 6))
    adversarial = scaled_run(epoch(True), batches, allowed_s - clean["measured_seconds"] * 2, device, probe=(1, 3))
    return {
        "samples": len(y),
        "batch_size": TRAIN_BATCH,
        "hidden": sizes["hidden"],
        "pgd": {"norm": PGD.norm, "eps": PGD.eps, "iterations": PGD.iterations, "mix": 1.0},
        "clean_epoch": clean,
        "adversarial_epoch": adversarial,
        "adversarial_over_clean": adversarial["full_seconds"] / clean["full_seconds"],
    }


def full_attack(
    model: nn.Module, sizes: dict[str, Any], batch_size: int, device: torch.device, allowed_s: float
) -> dict[str, Any]:
    """The full-scale attack: every sample, ``attack_iterations`` ista iterations in one λ round."""
    x, _ = bench_attack.synthetic_data(sizes["attack_samples"], seed=2)
    y = torch.zeros(len(x), dtype=torch.int64)
    iterations = sizes["attack_iterations"]

    def run(k: int) -> dict[str, Any]:
        settings = L1Settings(lam=LAM, step_size=STEP, method="ista", max_iterations=k, search_steps=1)
        attack = L1Attack(model, settings, device=device, batch_size=batch_size, include_misclassified=True)
        return {"success_rate": attack.run(x, y).success_rate}

    probe = (max(2, iterations // 100), max(6, 3 * (iterations // 100)))
    measured = scaled_run(run, iterations, allowed_s, device, probe=probe)
    return {
        "samples": len(x),
        "iterations": iterations,
        "batch_size": batch_size,
        "hidden": sizes["hidden"],
        "method": "ista",
        **measured,
        "rate": len(x) * iterations / measured["full_seconds"],
        "target_seconds": 120,
    }


def _params(hidden: int) -> Hyperparameters:
    return Hyperparameters(
        hidden_size=hidden,
        num_layers=1,
        lstm_activation="tanh",
        dropout=0.2,
        fc_size=64,
        fc_activation="relu",
        optimizer="adam",
        learning_rate=1e-3,
        batch_size=TRAIN_BATCH,
    )


# --- the run ---------------------------------------------------------------------------------------------


def print_table(report: dict[str, Any]) -> None:
    """The figures as one plain-text table."""
    rows = [
        ("device", f"{report['device_name']} ({report['device']}), torch {report['torch']}"),
        ("time", f"{report.get('total_seconds', 0.0):.0f} s of {report['budget_s']:.0f} s"),
    ]
    for key, describe in _ROWS.items():
        if key in report:
            rows.append((key.replace("_", " "), describe(report[key])))
    width = max(len(name) for name, _ in rows)
    print()
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


def _tests_row(t: dict[str, Any]) -> str:
    if "tests" not in t:
        return str(t.get("status", f"no JUnit report (exit code {t.get('exit_code')})"))
    return f"{t['passed']} passed, {t['failures']} failed, {t['errors']} errors, {t['skipped']} skipped"


def _probe_row(p: dict[str, Any]) -> str:
    return f"{p['batch_size']} ({'probed' if p['probed'] else 'CPU default'} in {p['seconds']:.1f} s)"


def _ratio_row(c: dict[str, Any]) -> str:
    ratios = " / ".join(f"{c[m]['ratio']:.2f}" for m in ("ista", "fista", "adam"))
    loops = " / ".join(f"{c[m]['loop_ratio']:.2f}" for m in ("ista", "fista", "adam"))
    return (
        f"{ratios} iteration ÷ forward+backward, loop alone {loops} (ista / fista / adam, batch {c['batch']}; "
        "target ista ≤ 1.10)"
    )


def _cudnn_row(k: dict[str, Any]) -> str:
    return (
        f"{k['cudnn_ms']:.2f} vs {k['native_ms']:.2f} ms per iteration, native ÷ cuDNN "
        f"{k['native_over_cudnn']:.2f} (batch {k['batch']})"
    )


def _training_row(t: dict[str, Any]) -> str:
    return (
        f"{t['samples']} samples: clean {_seconds(t['clean_epoch'])}, adversarial "
        f"{_seconds(t['adversarial_epoch'])} (× {t['adversarial_over_clean']:.1f})"
    )


def _attack_row(f: dict[str, Any]) -> str:
    return (
        f"{f['samples']} × {f['iterations']} in {_seconds(f)}, batch {f['batch_size']}, "
        f"{f['rate']:,.0f} samples·iterations/s (target ≤ {f['target_seconds']} s)"
    )


_ROWS: dict[str, Callable[[dict[str, Any]], str]] = {
    "tests": _tests_row,
    "batch_probe": _probe_row,
    "cost_ratio": _ratio_row,
    "cudnn_vs_native": _cudnn_row,
    "training": _training_row,
    "full_attack": _attack_row,
}


def _seconds(part: dict[str, Any]) -> str:
    if not part["extrapolated"]:
        return f"{part['full_seconds']:.1f} s"
    return f"{part['full_seconds']:.1f} s (extrapolated from {part['measured_units']} of {part['units']})"


def parse(argv: list[str]) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--quick", action="store_true", help="small sizes (about a minute on a CPU)")
    parser.add_argument("--budget-s", type=float, default=450.0, help="seconds for the whole run")
    parser.add_argument("--out", type=Path, default=None, help="JSON file (default $OUT/gpu.json or bench/results/)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    parser.add_argument("--skip-tests", action="store_true")
    return parser.parse_args(argv)


def _output(args: argparse.Namespace) -> Path:
    if args.out is not None:
        return Path(args.out)
    if os.environ.get("OUT"):
        return Path(os.environ["OUT"]) / "gpu.json"
    return ROOT / "bench" / "results" / "gpu.json"


def _header(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    return {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "quick": args.quick,
        "budget_s": args.budget_s,
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def measure(report: dict[str, Any], write: Callable[[], None], args: argparse.Namespace, clock: Clock) -> None:
    """Run the parts in order, writing the JSON after each."""
    device = torch.device(report["device"])
    sizes = QUICK if args.quick else FULL
    if not args.skip_tests:
        report["tests"] = run_tests(timeout_s=min(180.0, clock.left() / 3))
        write()
    model = bench_attack.build_model(sizes["hidden"], seed=0)
    report["train_accuracy"] = bench_attack.train_briefly(model, sizes["train_steps"], device, seed=0)
    report["batch_probe"] = batch_probe(model, sizes["attack_samples"], device)
    write()
    report["cost_ratio"] = cost_ratio(model, sizes, device)
    write()
    report["cudnn_vs_native"] = cudnn_vs_native(model, sizes, device)
    write()
    report["training"] = training(sizes, device, allowed_s=clock.left() * 0.3)
    write()
    batch = report["batch_probe"]["batch_size"]
    report["full_attack"] = full_attack(model, sizes, batch, device, allowed_s=clock.left() - 10)


def main(argv: list[str]) -> int:
    """Run the check, print the table, write the JSON; the exit code is 1 when a gpu test failed."""
    args = parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    clock = Clock(args.budget_s)
    name = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    report = _header(args, torch.device(name))
    out = _output(args)
    out.parent.mkdir(parents=True, exist_ok=True)

    def write() -> None:
        report["total_seconds"] = clock.used()
        out.write_text(json.dumps(report, indent=2))

    try:
        measure(report, write, args, clock)
    except KeyboardInterrupt:  # gpu_check.sh's time limit: keep what was measured
        report["interrupted"] = True
    write()
    print_table(report)
    print(f"\nwrote {out}")
    tests = report.get("tests", {})
    return 1 if tests.get("failures") or tests.get("errors") or tests.get("status") == "timed out" else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
