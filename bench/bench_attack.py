"""Benchmark of the sparse L1 attack: per-iteration cost, a comparison with ART's EAD, GPU throughput.

All parts use one round of the λ search (``search_steps = 1``): they measure the engine's iterations;
``bench_sparse.py`` measures what the full attack finds.

1. Cost ratio (same process, interleaved repeats): the marginal cost of one attack iteration,
   (T(K2) − T(K1)) / (K2 − K1) for two runs of ``L1Attack.run`` on the same batch, divided by the cost of
   one forward + backward (gradient w.r.t. the input, which is what the attack needs) of the same model
   on the same batch in the same kernels (on CUDA: cuDNN's, in the attack's LSTM kernel mode). Target
   ≤ 1.10. The marginal cost of the iteration loop alone (``loop``: the method's round without the
   minimal-support search, whose cost varies with what K iterations found) and the whole-run average
   T(K2)/K2 are reported as well.
2. ART's ElasticNet (EAD), when ``adversarial-robustness-toolbox`` is importable (a benchmark-only
   dependency; the part is skipped otherwise): same model, same samples, same iteration budget.
   Mapping: ART minimizes c·max(z_c − z_¬c, −κ) + ‖δ‖₂² + β‖δ‖₁; we set c = 1 (``initial_const``), one
   binary-search step (no search over c), ``learning_rate`` = our step, ``beta`` = step·λ (ART shrinks by β
   itself, ours by step·λ, so both thresholds agree at the first iteration; ART then decays its rate),
   ``confidence`` = κ, ``decision_rule="L1"`` so its best example is the smallest-L1 success, like ours.
3. ``--device cuda``: throughput (samples·iterations/s) across batch sizes, then the full attack on
   ``--full-samples`` samples × ``--full-iterations`` iterations with the best batch size.

The model is the project's BiLSTM (hidden 128 by default), briefly trained on a seeded synthetic task
so that its margins are not trivially small. Prints a table; writes bench/results/attack.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lstm_adv.attacks import L1Attack, L1Settings, SampleInputs, SuccessTracker
from lstm_adv.attacks.base import lstm_kernel_mode
from lstm_adv.attacks.l1 import margin

RESULTS = Path(__file__).parent / "results" / "attack.json"


def build_model(hidden: int, seed: int) -> nn.Module:
    """The project's BiLSTM with ``hidden`` units (one layer, tanh/relu, FC 64)."""
    from lstm_adv.models.bilstm import BiLSTM
    from lstm_adv.models.hyperparameters import Hyperparameters

    torch.manual_seed(seed)
    params = Hyperparameters(
        hidden_size=hidden,
        num_layers=1,
        lstm_activation="tanh",
        dropout=0.2,
        fc_size=64,
        fc_activation="relu",
        optimizer="adam",
        learning_rate=1e-3,
        batch_size=64,
    )
    return BiLSTM(params)


def synthetic_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x uniform in [0, 1]; y = 1 when features 4 and 13 are high over the last 12 hours. Shape: (n, 48, 19)."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 48, 19, generator=generator)
    score = x[:, 36:, 4].mean(1) + x[:, 36:, 13].mean(1)
    return x, (score > 1.0).long()


def train_briefly(model: nn.Module, steps: int, device: torch.device, seed: int) -> float:
    """A few hundred Adam steps on the synthetic task; returns the training accuracy of the last 512 samples."""
    x, y = synthetic_data(steps * 64, seed)
    model.to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for i in range(steps):
        xb, yb = x[i * 64 : (i + 1) * 64].to(device), y[i * 64 : (i + 1) * 64].to(device)
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(xb), yb).backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        accuracy = (model(x[-512:].to(device)).argmax(1).cpu() == y[-512:]).float().mean()
    return float(accuracy)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _timed(fn: Callable[[], object], device: torch.device) -> float:
    _synchronize(device)
    start = time.perf_counter()
    fn()
    _synchronize(device)
    return time.perf_counter() - start


def forward_backward(
    model: nn.Module, x: torch.Tensor, passes: int, device: torch.device, *, cudnn: bool = True
) -> Callable[[], None]:
    """``passes`` forward passes with eval-mode logits, each followed by the gradient of Σ margin w.r.t. the
    input, in the kernels the attack uses: on CUDA cuDNN's in the LSTM kernel mode (``cudnn``), else native."""
    target = torch.zeros(len(x), dtype=torch.int64, device=device)

    def run() -> None:
        model.eval()
        kernel_mode = device.type == "cuda" and cudnn
        mode = lstm_kernel_mode(model) if kernel_mode else torch.backends.cudnn.flags(enabled=False)
        with mode:
            for _ in range(passes):
                point = x.detach().requires_grad_(True)
                torch.autograd.grad(margin(model(point), target).sum(), point)

    return run


def cost_ratio(model: nn.Module, x: torch.Tensor, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Marginal attack-iteration cost ÷ forward+backward cost, per method (median of interleaved repeats)."""
    y = torch.zeros(len(x), dtype=torch.int64)
    k1, k2 = args.ratio_iterations // 4, args.ratio_iterations
    base = forward_backward(model, x.to(device), k2 - k1, device)
    times: dict[str, list[float]] = {"fb": []}
    attacks = {
        m: [
            L1Attack(
                model,
                L1Settings(lam=args.lam, step_size=args.step, method=m, max_iterations=k, search_steps=1),
                batch_size=len(x),
                include_misclassified=True,
                device=device,
            )
            for k in (k1, k2)
        ]
        for m in ("ista", "fista", "adam")
    }
    base()  # warm-up
    for repeat in range(args.repeats):
        times["fb"].append(_timed(base, device) / (k2 - k1))
        for method, (short, long) in attacks.items():
            t_short = _timed(partial(short.run, x, y), device)
            t_long = _timed(partial(long.run, x, y), device)
            loop_short = _timed(iteration_loop(short, x.to(device)), device)
            loop_long = _timed(iteration_loop(long, x.to(device)), device)
            if repeat:  # the first repeat warms up
                times.setdefault(method, []).append((t_long - t_short) / (k2 - k1))
                times.setdefault(f"{method}_whole", []).append(t_long / k2)
                times.setdefault(f"{method}_loop", []).append((loop_long - loop_short) / (k2 - k1))
    fb = statistics.median(times["fb"][1:] or times["fb"])
    out: dict[str, Any] = {
        "batch": len(x),
        "iterations": [k1, k2],
        "repeats": args.repeats,
        "forward_backward_ms": fb * 1e3,
    }
    for method in attacks:
        per_iter, whole = statistics.median(times[method]), statistics.median(times[f"{method}_whole"])
        loop = statistics.median(times[f"{method}_loop"])
        out[method] = {
            "iteration_ms": per_iter * 1e3,
            "ratio": per_iter / fb,
            "whole_run_ratio": whole / fb,
            "loop_ratio": loop / fb,
        }
    return out


def iteration_loop(attack: L1Attack, x: torch.Tensor, inputs: SampleInputs | None = None) -> Callable[[], None]:
    """One round of the attack's iterations alone (its method's loop), without the minimal-support search,
    whose cost varies with what the iterations found. ``inputs``: the threat's per-sample inputs (a record
    for the record threat), on x's device."""
    target = torch.zeros(len(x), dtype=torch.int64, device=x.device)
    lam = torch.full((len(x), 1, 1), attack.settings.lam, device=x.device)
    run = {"ista": attack._ista, "fista": attack._fista, "adam": attack._adam}[attack.settings.method]

    def loop() -> None:
        with attack._attack_mode():
            threat = attack.threat.batch(x, inputs or SampleInputs())
            run(attack._problem(target, threat), lam, SuccessTracker(threat.zeros(), attack.boundary), offset=0)

    return loop


def compare_art(model: nn.Module, x: torch.Tensor, args: argparse.Namespace) -> dict[str, Any] | None:
    """Ours (ista, fista) vs ART ElasticNet on the same samples, budget and model (CPU)."""
    try:
        from art.attacks.evasion import ElasticNet
        from art.estimators.classification import PyTorchClassifier
    except ImportError:
        return None
    model = model.cpu().eval()
    with torch.no_grad():
        predicted = model(x).argmax(1)
    runs: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, float]] = {}  # found, l1, l0, seconds
    for method in ("ista", "fista"):
        settings = L1Settings(
            lam=args.lam, step_size=args.step, method=method, max_iterations=args.art_iterations, search_steps=1
        )
        attack = L1Attack(model, settings, batch_size=len(x), include_misclassified=True)
        start = time.perf_counter()
        result = attack.run(x, predicted)
        runs[f"ours_{method}"] = (result.found, result.l1(), result.l0(), time.perf_counter() - start)
    classifier = PyTorchClassifier(
        model=model,
        loss=nn.CrossEntropyLoss(),
        input_shape=(48, 19),
        nb_classes=2,
        clip_values=(0.0, 1.0),
        device_type="cpu",
    )
    ead = ElasticNet(
        classifier,
        confidence=0.0,
        targeted=False,
        learning_rate=args.step,
        binary_search_steps=1,
        max_iter=args.art_iterations,
        beta=args.step * args.lam,
        initial_const=1.0,
        batch_size=len(x),
        decision_rule="L1",
        verbose=False,
    )
    x_np = x.numpy()
    start = time.perf_counter()
    adversarial = ead.generate(x_np, y=np.eye(2, dtype=np.float32)[predicted.numpy()])
    elapsed = time.perf_counter() - start
    with torch.no_grad():
        flipped = (model(torch.from_numpy(adversarial.astype(np.float32))).argmax(1) != predicted).numpy()
    delta = adversarial - x_np
    runs["art_ead"] = (flipped, np.abs(delta).sum(axis=(1, 2)), np.count_nonzero(delta, axis=(1, 2)), elapsed)
    common = np.logical_and.reduce([found for found, *_ in runs.values()])
    out: dict[str, Any] = {
        "samples": len(x),
        "iterations": args.art_iterations,
        "lam": args.lam,
        "step": args.step,
        "common_successes": int(common.sum()),
    }
    for name, (found, l1, l0, seconds) in runs.items():
        out[name] = {
            "success_rate": float(found.mean()),
            "mean_l1_best": _mean(l1[found]),
            "mean_l0_best": _mean(l0[found]),
            "mean_l1_common": _mean(l1[common]),
            "ms_per_iteration": seconds / args.art_iterations * 1e3,
        }
    return out


def _mean(values: np.ndarray) -> float | None:
    return float(values.mean()) if len(values) else None


def gpu_throughput(model: nn.Module, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Samples·iterations/s per batch size (short runs), then the full attack with the best batch size."""
    x, _ = synthetic_data(args.full_samples, seed=args.seed + 2)
    y = torch.zeros(len(x), dtype=torch.int64)
    rates: dict[int, float] = {}
    for batch in args.batch_sizes:
        settings = L1Settings(
            lam=args.lam, step_size=args.step, method="ista", max_iterations=args.probe_iterations, search_steps=1
        )
        attack = L1Attack(model, settings, batch_size=batch, include_misclassified=True, device=device)
        elapsed = _timed(partial(attack.run, x[:batch], y[:batch]), device)
        rates[batch] = min(batch, len(x)) * args.probe_iterations / elapsed
    best = max(rates, key=lambda b: rates[b])
    settings = L1Settings(
        lam=args.lam, step_size=args.step, method="ista", max_iterations=args.full_iterations, search_steps=1
    )
    attack = L1Attack(model, settings, batch_size=best, include_misclassified=True, device=device)
    elapsed = _timed(lambda: attack.run(x, y), device)
    return {
        "probe_rates": {str(b): r for b, r in rates.items()},
        "best_batch": best,
        "full_samples": len(x),
        "full_iterations": args.full_iterations,
        "full_seconds": elapsed,
        "full_rate": len(x) * args.full_iterations / elapsed,
        "device_name": torch.cuda.get_device_name(),
    }


def print_table(report: dict[str, Any]) -> None:
    """The figures as plain-text tables."""
    ratio = report["cost_ratio"]
    print(
        f"\nCost of one attack iteration ÷ one forward+backward ({report['device']}, batch {ratio['batch']}, "
        f"hidden {report['hidden']}, {report['threads']} thread(s)); forward+backward = "
        f"{ratio['forward_backward_ms']:.1f} ms"
    )
    print(f"{'method':<8}{'ms/iter':>10}{'ratio':>8}{'loop':>7}{'whole-run':>11}   (target ratio ≤ 1.10)")
    for method in ("ista", "fista", "adam"):
        row = ratio[method]
        print(
            f"{method:<8}{row['iteration_ms']:>10.1f}{row['ratio']:>8.2f}{row['loop_ratio']:>7.2f}"
            f"{row['whole_run_ratio']:>11.2f}"
        )
    art = report.get("art_comparison")
    if art is None:
        print("\nART comparison skipped: install adversarial-robustness-toolbox (benchmark-only dependency).")
    else:
        print(
            f"\nvs ART ElasticNet: {art['samples']} samples, {art['iterations']} iterations, λ={art['lam']}, "
            f"step={art['step']}"
        )
        print(
            f"{'attack':<12}{'success':>9}{'mean L1 best':>14}{'mean L0 best':>14}"
            f"{'L1 on common':>14}{'ms/iter':>10}   (common = {art['common_successes']} flipped by all)"
        )
        for name in ("ours_ista", "ours_fista", "art_ead"):
            row = art[name]
            cells = [
                _fmt(row[key], digits)
                for key, digits in (("mean_l1_best", 3), ("mean_l0_best", 1), ("mean_l1_common", 3))
            ]
            print(
                f"{name:<12}{row['success_rate']:>9.3f}{cells[0]:>14}{cells[1]:>14}{cells[2]:>14}"
                f"{row['ms_per_iteration']:>10.1f}"
            )
    gpu = report.get("gpu")
    if gpu is not None:
        print(f"\nGPU ({gpu['device_name']}): samples·iterations/s by batch size")
        for batch, rate in gpu["probe_rates"].items():
            print(f"  batch {batch:>6}: {rate:,.0f}")
        print(
            f"full attack: {gpu['full_samples']} × {gpu['full_iterations']} in {gpu['full_seconds']:.1f} s "
            f"({gpu['full_rate']:,.0f} samples·iterations/s, batch {gpu['best_batch']}; target ≤ 120 s)"
        )


def _fmt(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def parse(argv: list[str]) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--batch", type=int, default=256, help="batch of the cost-ratio measurement")
    parser.add_argument("--ratio-iterations", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    parser.add_argument("--lam", type=float, default=0.01)
    parser.add_argument("--step", type=float, default=0.5)
    parser.add_argument("--train-steps", type=int, default=150)
    parser.add_argument("--art-samples", type=int, default=128)
    parser.add_argument("--art-iterations", type=int, default=100)
    parser.add_argument("--skip-art", action="store_true")
    parser.add_argument("--full-samples", type=int, default=37_832)
    parser.add_argument("--full-iterations", type=int, default=1000)
    parser.add_argument("--probe-iterations", type=int, default=20)
    parser.add_argument(
        "--batch-sizes", type=int, nargs="+", default=[4096, 8192, 16384, 37_832], help="batch sizes probed on the GPU"
    )
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    """Run the benchmark, print the tables, write the JSON."""
    args = parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model = build_model(args.hidden, args.seed)
    accuracy = train_briefly(model, args.train_steps, device, args.seed)
    x, _ = synthetic_data(args.batch, seed=args.seed + 1)
    report: dict[str, Any] = {
        "device": str(device),
        "hidden": args.hidden,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.processor() or "?",
        "train_accuracy": accuracy,
        "cost_ratio": cost_ratio(model, x, args, device),
    }
    if not args.skip_art:
        report["art_comparison"] = compare_art(model, synthetic_data(args.art_samples, seed=args.seed + 3)[0], args)
    if device.type == "cuda":
        report["gpu"] = gpu_throughput(model.to(device), args, device)
    print_table(report)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
