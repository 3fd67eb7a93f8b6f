"""Seconds per training epoch: lstm-adv's on-device index-slice loop vs a plain DataLoader loop.

Same model (BiLSTM, hidden 128), same data (random, 26,000 × 48 × 19), same optimizer and batch
size (256), same process. Rows:

- ``index slices (lstm-adv)``: ``lstm_adv.training_loop.train_epoch`` — tensors on the device,
  batches are index slices of a seeded permutation, one device sync per epoch.
- ``DataLoader (plain)``: the plain loop — ``DataLoader(TensorDataset, batch_size=256,
  shuffle=True)``, per-batch collate and host→device copies, ``loss.item()`` per batch.

Usage: ``python bench/bench_train.py [--device auto|cpu|cuda] [--samples 26000] [--epochs 1]``.
Prints a table and writes ``bench/results/train.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lstm_adv.models import BiLSTM, Hyperparameters
from lstm_adv.training_loop import SplitTensors, resolve_device, train_epoch

RESULTS = Path(__file__).parent / "results" / "train.json"


def _params(hidden: int, batch: int) -> Hyperparameters:
    return Hyperparameters(
        hidden_size=hidden,
        num_layers=1,
        lstm_activation="tanh",
        dropout=0.2,
        fc_size=64,
        fc_activation="relu",
        optimizer="adam",
        learning_rate=1e-3,
        batch_size=batch,
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _fresh(params: Hyperparameters, device: torch.device) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = BiLSTM(params).to(device)
    return model, torch.optim.Adam(model.parameters(), lr=params.learning_rate)


def index_slice_epoch(
    x: torch.Tensor, y: torch.Tensor, params: Hyperparameters, device: torch.device, limit: int | None
) -> None:
    """One epoch (or ``limit`` batches) of lstm-adv's loop."""
    model, optimizer = _fresh(params, device)
    split = SplitTensors(x.to(device), y.to(device))
    order = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(0))
    if limit is not None:
        order = order[: limit * params.batch_size]
    train_epoch(model, optimizer, nn.CrossEntropyLoss(), split, params.batch_size, order=order, clip=5.0)


def dataloader_epoch(
    x: torch.Tensor, y: torch.Tensor, params: Hyperparameters, device: torch.device, limit: int | None
) -> None:
    """One epoch (or ``limit`` batches) of the textbook DataLoader loop."""
    model, optimizer = _fresh(params, device)
    criterion = nn.CrossEntropyLoss()
    loader = DataLoader(TensorDataset(x, y), batch_size=params.batch_size, shuffle=True)
    model.train()
    for i, (xb, yb) in enumerate(loader):
        if limit is not None and i >= limit:
            break
        xb, yb = xb.to(device), yb.to(device)
        loss = criterion(model(xb), yb)
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
        loss.item()  # the usual per-batch logging sync


def timed(fn: Callable[..., None], *args: Any) -> float:
    """Seconds of one full epoch."""
    device = args[3]
    _sync(device)
    started = time.perf_counter()
    fn(*args, None)
    _sync(device)
    return time.perf_counter() - started


def measure(loops: dict[str, Callable[..., None]], *args: Any, rounds: int) -> dict[str, float]:
    """Best-of-``rounds`` epoch time per loop; loops alternate so that drift in machine load hits both alike."""
    for fn in loops.values():
        fn(*args, 3)  # warm-up: kernels, allocator, threads
    times: dict[str, list[float]] = {label: [] for label in loops}
    for _ in range(rounds):
        for label, fn in loops.items():
            times[label].append(timed(fn, *args))
    return {label: min(values) for label, values in times.items()}


def main() -> None:
    """Run the benchmark, print the table, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--samples", type=int, default=26_000)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=2, help="Timed epochs per loop, alternating; best reported.")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads [default: torch's choice].")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    torch.manual_seed(0)
    x = torch.rand(args.samples, 48, 19)
    y = (torch.rand(args.samples) < 0.1).long()
    params = _params(args.hidden, args.batch)
    common = (x, y, params, device)
    loops = {"index slices (lstm-adv)": index_slice_epoch, "DataLoader (plain)": dataloader_epoch}
    rows = measure(loops, *common, rounds=args.epochs)
    baseline = rows["DataLoader (plain)"]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    print(
        f"{args.samples} samples × 48 × 19, hidden {args.hidden}, batch {args.batch}, device {device} ({name}), "
        f"torch threads {torch.get_num_threads()}, cpus {os.cpu_count()}"
    )
    print(f"{'loop':<30}{'s/epoch':>10}{'vs DataLoader':>16}")
    for label, seconds in rows.items():
        print(f"{label:<30}{seconds:>10.2f}{baseline / seconds:>15.2f}×")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "samples": args.samples,
        "hidden": args.hidden,
        "batch": args.batch,
        "device": str(device),
        "device_name": name,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "seconds_per_epoch": rows,
        "speedup_vs_dataloader": baseline / rows["index slices (lstm-adv)"],
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
    args.out.write_text(json.dumps(result, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
