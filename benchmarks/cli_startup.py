"""Start-up time of the command line: `cocoa-lens --help` against a bare `python -c pass`.

Median wall time of N subprocess runs each (default 5), side by side. Target: `cocoa-lens --help` under 1 s (no
torch import before a command needs it). Run: `.venv/bin/python benchmarks/cli_startup.py [--runs 5]`
"""

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path


def median_wall(argv: list[str], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    script = Path(sys.executable).with_name("cocoa-lens")  # the console script beside this interpreter
    command = [str(script)] if script.exists() else [sys.executable, "-m", "analysis.cli"]
    help_s = median_wall([*command, "--help"], args.runs)
    bare_s = median_wall([sys.executable, "-c", "pass"], args.runs)
    print(f"median of {args.runs} runs: cocoa-lens --help {help_s:.3f} s, python -c pass {bare_s:.3f} s, "
          f"difference {help_s - bare_s:.3f} s")


if __name__ == "__main__":
    main()
