"""Benchmark the preprocess stage (query-run Parquet tables → FeatureMatrix) at several cohort sizes.

For each size (admissions) the input is built the real way and cached under ``--work``:
synthetic MIMIC-III tables (:func:`lstm_adv.synth.generate_cohort`) are loaded into the embedded
PostgreSQL (:func:`lstm_adv.database.loader.load_tables`) and the cohort SQL exports a query run
(:func:`lstm_adv.query.run_cohort_query`); those three steps are timed too. The preprocess stage then
runs in a fresh subprocess per size (reading the query run's Parquet files, building the
FeatureMatrix, writing ``features.npz``), whose wall time and peak resident memory (``wait4``
rusage of that child alone) are reported.

Usage::

    .venv/bin/python bench/bench_preprocess.py --sizes 1000 5000 20000 42000

Prints a table and writes ``bench/results/preprocess.json``. A cached query run is reused when the
size, seed and code of the input path match; ``--fresh`` rebuilds it. Any embedded server this
script starts is stopped at the end.
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


def _child(query_run_path: str) -> None:
    """Run the preprocess stage on one query run folder; print timings and peak RSS as JSON."""
    import resource

    from lstm_adv.preprocess import QueryTables, build_feature_matrix
    from lstm_adv.resources import load_feature_spec
    from lstm_adv.results.config_file import load_config
    from lstm_adv.results.store import RunStore

    path = Path(query_run_path)
    store = RunStore(path.parent)  # a run folder is <store root>/<run id>
    run = store.get(path.name, kind="query")
    spec = load_feature_spec()
    config = load_config()
    started = time.perf_counter()
    tables = QueryTables.from_run(run, spec)
    read = time.perf_counter()
    matrix, _ = build_feature_matrix(
        tables,
        spec,
        config=config.preprocess,
        window_hours=config.cohort.window_hours,
        lookback_hours=config.cohort.lookback_hours,
    )
    built = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        matrix.to_npz(Path(tmp) / "features.npz")
    written = time.perf_counter()
    result = {
        "seconds": written - started,
        "read_s": read - started,
        "build_s": built - read,
        "write_s": written - built,
        "measurement_rows": int(tables.measurements.value.size),
        "admissions_in": len(tables.admissions),
        "samples_out": matrix.n_samples,
        "peak_rss_mb_self": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    print(json.dumps(result))


def _measure(query_run_path: Path) -> dict[str, Any]:
    """Run :func:`_child` in a fresh interpreter; add its peak RSS from wait4 (that child only)."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, __file__, "--child", str(query_run_path)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"preprocess child failed with exit code {proc.returncode} on {query_run_path}")
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    result["process_s"] = time.perf_counter() - started
    result["peak_rss_mb"] = usage.ru_maxrss / 1024  # kilobytes on Linux
    result["cpu_user_s"], result["cpu_sys_s"] = usage.ru_utime, usage.ru_stime  # whole child, imports included
    return result


def _input_key(size: int, seed: int) -> dict[str, Any]:
    return {"admissions": size, "seed": seed, "path": "synth → embedded PostgreSQL → run_cohort_query"}


def _query_run(work: Path, size: int, seed: int, *, fresh: bool, server: dict[str, Any]) -> tuple[Path, dict[str, Any]]:
    """The cached query run of ``size`` admissions, built (and timed) if missing."""
    from lstm_adv.results.store import RunStore

    marker = work / f"input-{size}-seed{seed}.json"
    store = RunStore(work / "store")
    if marker.exists() and not fresh:
        cached = json.loads(marker.read_text())
        path = Path(cached["query_run_path"])
        if cached.get("key") == _input_key(size, seed) and path.is_dir():
            return path, cached["timings"]
    path, timings = _build_query_run(work, store, size, seed, server)
    marker.write_text(json.dumps({"key": _input_key(size, seed), "query_run_path": str(path), "timings": timings}))
    return path, timings


def _build_query_run(
    work: Path, store: Any, size: int, seed: int, server: dict[str, Any]
) -> tuple[Path, dict[str, Any]]:
    """Generate, load and query ``size`` synthetic admissions; time each step."""
    from psycopg import sql

    from lstm_adv.config import EmbeddedConfig
    from lstm_adv.database.connection import connect
    from lstm_adv.database.loader import load_tables
    from lstm_adv.database.server import ensure_server, server_status
    from lstm_adv.query import run_cohort_query
    from lstm_adv.results.config_file import load_config
    from lstm_adv.synth import generate_cohort

    pg_dir = work / "pg"
    if "info" not in server:
        server["started_here"] = server_status(pg_dir) is None
        server["info"] = ensure_server(pg_dir, EmbeddedConfig())
    schema = f"bench_{size}"
    config = load_config()
    t0 = time.perf_counter()
    cohort = generate_cohort(size, seed=seed)
    t1 = time.perf_counter()
    with connect(server["info"].dsn, timeout_s=30) as conn:
        counts = load_tables(conn, schema, cohort.tables)
        conn.commit()
        t2 = time.perf_counter()
        del cohort
        run = run_cohort_query(conn, schema=schema, config=config, store=store)
        t3 = time.perf_counter()
        conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))  # keep the disk small
        conn.commit()
    timings = {
        "synth_s": t1 - t0,
        "load_s": t2 - t1,
        "query_s": t3 - t2,
        "source_rows": int(sum(counts.values())),
        "query_tables": run.manifest.summary["tables"],
    }
    return run.path, timings


def _dense_query_run(work: Path, size: int, seed: int) -> tuple[Path, dict[str, Any]]:
    """A query run written directly (NOT through SQL) at MIMIC-III-like density: ~690 rows per admission.

    Vitals ~1.35 per hour per feature, labs every ~8 h, blood gases every ~12 h, over the 24 h lookback
    and the 48 h window (~29M rows at 42,000 admissions; the synthetic SQL path gives ~220 per admission).
    """
    import numpy as np
    import pandas as pd

    from lstm_adv.resources import load_feature_spec
    from lstm_adv.results.store import RunStore

    marker = work / f"dense-{size}-seed{seed}.json"
    if marker.exists() and Path(json.loads(marker.read_text())["query_run_path"]).is_dir():
        return Path(json.loads(marker.read_text())["query_run_path"]), {"synth_s": 0.0, "load_s": 0.0, "query_s": 0.0}
    spec, rng = load_feature_spec(), np.random.default_rng(seed)
    minute = np.timedelta64(1, "m")
    start = np.datetime64("2150-01-01T00:00", "ns") + rng.integers(0, 10**7, size) * minute
    admissions = pd.DataFrame(
        {
            "subject_id": rng.integers(1, int(size * 0.8) + 2, size),
            "hadm_id": np.arange(size) + 100_000,
            "window_start": start,
            "first_icustay_id": np.arange(size) + 200_000,
            "label": (rng.random(size) < 0.1) * 1,
        }
    )
    rate = {"vital": 1.35, "lab": 1 / 8, "bloodgas": 1 / 12}

    def table(source: str) -> pd.DataFrame:
        codes = np.array([i for i, f in enumerate(spec.features) if f.source == source])
        per = rng.poisson(rate[source] * 72, size=(size, codes.size)).ravel()
        adm, feature = np.repeat(np.repeat(np.arange(size), codes.size), per), np.repeat(np.tile(codes, size), per)
        seconds = rng.integers(-24 * 3600, 48 * 3600, adm.size) * np.timedelta64(1, "s")
        return pd.DataFrame(
            {
                "hadm_id": admissions["hadm_id"].to_numpy()[adm],
                "charttime": start[adm] + seconds,
                "feature": np.array(spec.names, dtype=object)[feature],
                "value": np.round(rng.normal(80, 20, adm.size), 1),
            }
        )

    with RunStore(work / "store").create("query") as writer:
        admissions.to_parquet(writer.file("admissions.parquet"))
        for name, source in (("vitals", "vital"), ("labs", "lab"), ("bloodgas", "bloodgas")):
            table(source).to_parquet(writer.file(f"{name}.parquet"))
        run = writer.commit()
    marker.write_text(json.dumps({"query_run_path": str(run.path)}))
    return run.path, {"synth_s": 0.0, "load_s": 0.0, "query_s": 0.0}


def _table(rows: list[dict[str, Any]]) -> str:
    head = (
        f"{'input':>6} {'admissions':>10} {'meas. rows':>11} {'samples':>8} {'preproc s':>9} {'peak MB':>8} "
        f"{'s/1k adm':>8} {'cpu s':>6} "
        f"{'synth s':>8} {'load s':>7} {'query s':>8}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        t = r["input_timings"]
        lines.append(
            f"{r['input']:>6} {r['admissions']:>10,} {r['measurement_rows']:>11,} {r['samples_out']:>8,} "
            f"{r['seconds']:>9.2f} "
            f"{r['peak_rss_mb']:>8.0f} {r['seconds_per_1k_admissions']:>8.3f} {r['cpu_user_s'] + r['cpu_sys_s']:>6.1f} "
            f"{t['synth_s']:>8.1f} {t['load_s']:>7.1f} {t['query_s']:>8.1f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Build the inputs, measure each size in a fresh process, print the table, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(DEFAULT_SIZES), help="admissions per size")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic cohort")
    parser.add_argument("--work", type=Path, default=RESULTS / "work", help="cache of inputs and the database")
    parser.add_argument("--fresh", action="store_true", help="rebuild the cached query runs")
    parser.add_argument("--dense", action="store_true", help="also measure a direct ~690 rows/admission input")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args, _ = parser.parse_known_args(argv)  # run_all.py passes every script the same arguments
    if args.child:
        _child(args.child)
        return 0
    args.work.mkdir(parents=True, exist_ok=True)
    server: dict[str, Any] = {}
    rows = []
    try:
        for size in args.sizes:
            inputs = [("synth", *_query_run(args.work, size, args.seed, fresh=args.fresh, server=server))]
            if args.dense:
                inputs.append(("dense", *_dense_query_run(args.work, size, args.seed)))
            for kind, path, timings in inputs:
                result = _measure(path)
                result.update(
                    input=kind,
                    admissions=size,
                    input_timings=timings,
                    seconds_per_1k_admissions=result["seconds"] / size * 1000,
                )
                rows.append(result)
                print(f"{kind} {size:,}: {result['seconds']:.2f} s, peak {result['peak_rss_mb']:.0f} MB", flush=True)
    finally:
        if server.get("started_here"):
            from lstm_adv.database.server import stop_server

            stop_server(args.work / "pg")
    print(_table(rows))
    RESULTS.mkdir(parents=True, exist_ok=True)
    report = {
        "benchmark": "preprocess: query-run Parquet → FeatureMatrix (read + build + write npz), fresh process per size",
        "inputs": {
            "synth": "lstm_adv.synth.generate_cohort → embedded PostgreSQL (load_tables) → "
            "lstm_adv.query.run_cohort_query",
            "dense": "query-run Parquet written directly (not through SQL), ~690 rows per admission (--dense)",
        },
        "note": "seconds = wall time of read + build + npz write in a fresh process; cpu s = user + sys of that "
        "whole process (imports included): on a shared machine the wall time includes waiting for a CPU",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "rows": rows,
    }
    (RESULTS / "preprocess.json").write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
