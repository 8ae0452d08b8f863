"""Two probing jobs side by side on this machine's cores, as `cocoa-lens study` runs two notebook kernels.

Each job is one `eos_probing` mask's worth of work (four attributes, five layers, 3 folds, control tasks)
on random states [240, 5, 128]. Prints the wall time of the pair with every BLAS/torch pool at its default
size (each child spins over all cores) and inside `analysis.study.share_cores` (cores // jobs threads
each), and their ratio. Run: `.venv/bin/python benchmarks/parallel_probing.py [--jobs 2]`
"""

import argparse
import os
import subprocess
import sys
import time

from analysis.study import THREAD_VARS, share_cores

JOB = """
import numpy as np
from analysis.metrics.probing import probe_attributes
rng = np.random.default_rng(0)
states = rng.normal(size=(240, 5, 128))
probe_attributes(states, {a: rng.integers(0, k, 240).tolist() for a, k in zip("abcd", (6, 4, 9, 3))}, cv=3)
"""


def run_pair(jobs: int, env: dict) -> float:
    start = time.perf_counter()
    children = [subprocess.Popen([sys.executable, "-c", JOB], env=env) for _ in range(jobs)]
    if any(child.wait() for child in children):
        raise RuntimeError("a probing job failed")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    default_env = {k: v for k, v in os.environ.items() if k not in THREAD_VARS}
    with share_cores(args.jobs):
        shared_env = dict(os.environ)
    shared = run_pair(args.jobs, shared_env)
    default = run_pair(args.jobs, default_env)
    print(f"{args.jobs} probing jobs on {len(os.sched_getaffinity(0))} cores: default pools {default:.1f} s, "
          f"shared cores ({shared_env[THREAD_VARS[0]]} thread each) {shared:.1f} s, ratio {default / shared:.1f}x")


if __name__ == "__main__":
    main()
