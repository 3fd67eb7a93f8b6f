"""Benchmark of the CLI's start-up: `lstm-adv --help` (and a command's `--help`) against `import torch`.

Each is a fresh interpreter (`python -c …`), run ``--repeats`` times interleaved; the table gives the
median wall time of each and its ratio to importing torch on the same machine in the same run.
Target: every `--help` ≤ 0.3 × `import torch`; an option mistake (`--trials 0`, `--split tset`) is one line in
under 1 s on a quiet machine. Writes bench/results/cli.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "cli.json"
CASES = {
    "import torch": "import torch",
    "lstm-adv --help": "import sys; from lstm_adv.cli import main; sys.argv = ['lstm-adv', '--help']; main()",
    "lstm-adv attack --help": (
        "import sys; from lstm_adv.cli import main; sys.argv = ['lstm-adv', 'attack', '--help']; main()"
    ),
    "lstm-adv db status --help": (
        "import sys; from lstm_adv.cli import main; sys.argv = ['lstm-adv', 'db', 'status', '--help']; main()"
    ),
    # option mistakes: one line before torch, pandas or optuna load
    "tune-model --trials 0": (
        "import sys; from lstm_adv.cli import main; sys.argv = ['lstm-adv', 'tune-model', '--trials', '0']; main()"
    ),
    "attack --split tset": (
        "import sys; from lstm_adv.cli import main; sys.argv = ['lstm-adv', 'attack', '--split', 'tset']; main()"
    ),
}


def timed(code: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=False, capture_output=True)
    return time.perf_counter() - start


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    times: dict[str, list[float]] = {name: [] for name in CASES}
    for code in CASES.values():  # warm the file cache once
        timed(code)
    for _ in range(args.repeats):
        for name, code in CASES.items():
            times[name].append(timed(code))
    medians = {name: statistics.median(values) for name, values in times.items()}
    torch_s = medians["import torch"]
    report = {
        "repeats": args.repeats,
        "python": sys.version.split()[0],
        "median_seconds": medians,
        "ratio_to_import_torch": {name: value / torch_s for name, value in medians.items()},
        "target_ratio": 0.3,
    }
    print(
        f"\nCLI start-up, median of {args.repeats} fresh interpreters "
        "(target: --help ≤ 0.3 × import torch; a bad option < 1 s)"
    )
    print(f"{'command':<28}{'seconds':>9}{'÷ import torch':>16}")
    for name, value in medians.items():
        print(f"{name:<28}{value:>9.3f}{value / torch_s:>16.2f}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
