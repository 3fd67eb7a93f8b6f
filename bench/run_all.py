"""Run every benchmark script (bench/bench_*.py) in turn; extra arguments are passed to each.

Each script prints a table and writes JSON under bench/results/.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def main() -> int:
    """Run the benchmarks; the exit code is the first failing script's, else 0."""
    status = 0
    for script in sorted(Path(__file__).parent.glob("bench_*.py")):
        print(f"\n=== {script.name} ===", flush=True)
        code = subprocess.run([sys.executable, str(script), *sys.argv[1:]], check=False).returncode
        status = status or code
    return status


if __name__ == "__main__":
    sys.exit(main())
