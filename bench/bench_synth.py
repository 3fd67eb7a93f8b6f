"""Benchmark `lstm-adv synth`: generate a synthetic MIMIC-III cohort and load it into PostgreSQL.

For each size (admissions) a fresh subprocess generates the cohort
(:func:`lstm_adv.synth.generate_cohort`) and loads it into the embedded PostgreSQL
(:func:`lstm_adv.synth.load_cohort`, i.e. the loader the demo uses), timing both. Reported per size:
wall seconds of each step, CPU seconds of the Python process and of the server backend doing the
COPY (so that numbers taken on a busy machine can be judged), rows written, and the child's peak
resident memory. Target (issue): generation + load <= 120 s at 42,000 admissions on 2 cores.

Usage::

    .venv/bin/python bench/bench_synth.py --sizes 1000 5000 20000 42000
    .venv/bin/python bench/bench_synth.py --sizes 1000,42000 --seed 0

Prints a table and writes ``bench/results/synth.json``. The embedded server it starts (in a
temporary folder) is stopped at the end. Unknown options (meant for other benchmarks) are ignored.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

RESULTS = HERE / "results"
DEFAULT_SIZES = (1000, 5000, 20000, 42000)
SCHEMA = "bench_synth"
TARGET_S = 120.0


def _backend_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` (a server backend), or None if unreadable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _child(size: int, seed: int, dsn: str) -> None:
    """Generate and load one cohort; print the measurements as one JSON line."""
    import resource

    from lstm_adv.database.connection import connect
    from lstm_adv.synth import generate_cohort, load_cohort

    cpu0 = time.process_time()
    started = time.perf_counter()
    cohort = generate_cohort(size, seed=seed)
    generated = time.perf_counter()
    cpu1 = time.process_time()
    with connect(dsn) as conn:
        backend = conn.info.backend_pid
        server0 = _backend_cpu_s(backend)
        counts = load_cohort(conn, SCHEMA, cohort)
        server1 = _backend_cpu_s(backend)
    loaded = time.perf_counter()
    print(
        json.dumps(
            {
                "admissions": size,
                "generate_s": round(generated - started, 2),
                "load_s": round(loaded - generated, 2),
                "total_s": round(loaded - started, 2),
                "generate_cpu_s": round(cpu1 - cpu0, 2),
                "load_client_cpu_s": round(time.process_time() - cpu1, 2),
                "load_server_cpu_s": None if server0 is None or server1 is None else round(server1 - server0, 2),
                "rows": counts,
                "total_rows": sum(counts.values()),
                "prevalence": round(cohort.prevalence, 4),
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            }
        )
    )


def _sizes(values: list[str]) -> list[int]:
    return [int(part) for value in values for part in value.split(",") if part.strip()]


def _run_size(size: int, seed: int, dsn: str) -> dict[str, Any]:
    command = [sys.executable, __file__, "--child", str(size), "--seed", str(seed), "--dsn", dsn]
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _print_table(results: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"lstm-adv synth: generate + load (target <= {TARGET_S:.0f} s at 42,000 admissions)")
    for column in (
        "admissions",
        "rows",
        "generate s",
        "load s",
        "total s",
        "CPU s (py gen/py load/server)",
        "peak RSS MB",
        "s per 1k adm",
    ):
        table.add_column(column, justify="right")
    for r in results:
        server = "?" if r["load_server_cpu_s"] is None else f"{r['load_server_cpu_s']:.1f}"
        table.add_row(
            f"{r['admissions']:,}",
            f"{r['total_rows']:,}",
            f"{r['generate_s']:.1f}",
            f"{r['load_s']:.1f}",
            f"{r['total_s']:.1f}",
            f"{r['generate_cpu_s']:.1f} / {r['load_client_cpu_s']:.1f} / {server}",
            f"{r['peak_rss_mb']:,.0f}",
            f"{1000 * r['total_s'] / r['admissions']:.2f}",
        )
    Console(width=150).print(table)


def main() -> int:
    """Benchmark every requested size; write bench/results/synth.json."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sizes", nargs="+", default=[str(s) for s in DEFAULT_SIZES])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--dsn", help=argparse.SUPPRESS)
    args, _ = parser.parse_known_args()
    if args.child is not None:
        _child(args.child, args.seed, args.dsn)
        return 0

    from lstm_adv.config import EmbeddedConfig
    from lstm_adv.database.server import start_server, stop_server

    load_before = os.getloadavg()
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-synth-") as tmp:
        pg_dir = Path(tmp) / "pg"
        dsn = start_server(pg_dir, EmbeddedConfig()).dsn
        try:
            for size in _sizes(args.sizes):
                results.append(_run_size(size, args.seed, dsn))
                print(f"{size:,} admissions: {results[-1]['total_s']:.1f} s", flush=True)
        finally:
            stop_server(pg_dir)
    _print_table(results)
    report = {
        "benchmark": "synth",
        "target_s_at_42000": TARGET_S,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
        },
        "seed": args.seed,
        "results": results,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "synth.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {RESULTS / 'synth.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
