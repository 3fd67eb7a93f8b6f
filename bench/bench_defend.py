"""Seconds per epoch: adaptive adversarial training (PGD, K steps) vs one clean epoch on the same data.

Same model (BiLSTM, hidden 64), same data (random, N × 48 × 19), same batch size; the adaptive epoch
regenerates PGD examples for every training sample against the current weights (mix 1) and then
trains on them with the model stage's loop. The expectation is a ratio of about K + 1 (K attack
forward+backward passes plus the training pass per sample).

Usage: ``python bench/bench_defend.py [--device auto|cpu|cuda] [--samples 4000] [--steps 10]``.
Prints a table and writes ``bench/results/defend.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch
from torch import nn

from lstm_adv.attacks.pgd import PgdAttack, PgdSettings
from lstm_adv.models import BiLSTM, Hyperparameters
from lstm_adv.training_loop import SplitTensors, resolve_device, train_epoch

RESULTS = Path(__file__).parent / "results" / "defend.json"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def epoch_seconds(split: SplitTensors, params: Hyperparameters, device: torch.device, steps: int | None) -> float:
    """One epoch: clean (``steps`` None) or adaptive with fresh K-step PGD examples for every sample."""
    torch.manual_seed(0)
    model = BiLSTM(params).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=params.learning_rate)
    order = torch.randperm(split.x.shape[0], generator=torch.Generator().manual_seed(0))
    _sync(device)
    started = time.perf_counter()
    if steps is not None:
        attack = PgdAttack(model, PgdSettings(eps=0.05, iterations=steps), device=device, batch_size=1024)
        split = SplitTensors(split.x + attack.perturb(split.x, split.y), split.y)
    train_epoch(model, optimizer, nn.CrossEntropyLoss(), split, params.batch_size, order=order, clip=5.0)
    _sync(device)
    return time.perf_counter() - started


def main() -> None:
    """Run the benchmark, print the table, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--samples", type=int, default=4000)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=2, help="Timed epochs per variant, alternating; best reported.")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads [default: torch's choice].")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args, _unknown = parser.parse_known_args()  # run_all.py passes the same options to every script
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    params = Hyperparameters(
        hidden_size=args.hidden,
        num_layers=1,
        lstm_activation="tanh",
        dropout=0.2,
        fc_size=64,
        fc_activation="relu",
        optimizer="adam",
        learning_rate=1e-3,
        batch_size=args.batch,
    )
    torch.manual_seed(0)
    split = SplitTensors(torch.rand(args.samples, 48, 19).to(device), torch.randint(0, 2, (args.samples,)).to(device))
    epoch_seconds(SplitTensors(split.x[:512], split.y[:512]), params, device, args.steps)  # warm-up
    times: dict[str, list[float]] = {"clean": [], "adaptive": []}
    for _ in range(args.rounds):
        times["clean"].append(epoch_seconds(split, params, device, None))
        times["adaptive"].append(epoch_seconds(split, params, device, args.steps))
    best = {name: min(values) for name, values in times.items()}
    ratio = best["adaptive"] / best["clean"]
    print(f"{'epoch':<28}{'seconds':>10}")
    print(f"{'clean':<28}{best['clean']:>10.2f}")
    print(f"{f'adaptive (PGD {args.steps} steps)':<28}{best['adaptive']:>10.2f}")
    print(f"ratio {ratio:.2f} (expectation ≈ steps + 1 = {args.steps + 1}) on {device}, N={args.samples}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "device": str(device),
                "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None,
                "cpu": platform.processor() or platform.machine(),
                "cpu_count": os.cpu_count(),
                "threads": torch.get_num_threads(),
                "samples": args.samples,
                "steps": args.steps,
                "hidden": args.hidden,
                "batch": args.batch,
                "seconds": best,
                "ratio": ratio,
                "expected_ratio": args.steps + 1,
            },
            indent=2,
        ),
        encoding="utf-8",
    )


if __name__ == "__main__":
    main()
