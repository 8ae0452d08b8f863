"""Batched probes against the scikit-learn loop they replace, on an `eos_probing`-sized problem.

Random states [N=240, 6 layers (embeddings + 5), d=64] with four attributes (6, 4, 9 and 3 classes) planted in the
later layers, 5 grouped folds, Hewitt & Liang control tasks: 4 x 2 x 5 x 6 = 240 logistic regressions. Times
`probe_attributes` (batched L-BFGS solves) against the same tasks fitted one scikit-learn `LogisticRegression` at a
time (what `probe_attributes` ran before), side by side: end to end (both include the StratifiedGroupKFold splits)
and the fits alone on the same folds; then the largest difference in mean accuracy. Wall and CPU time (this
process's: the fair one on a shared machine, with one thread) are both given.
Run: `OMP_NUM_THREADS=1 .venv/bin/python benchmarks/batched_probing.py [--repeats 3]`
"""

import argparse
import time

import numpy as np
import torch

from analysis.metrics.probing import LayerProbe, _cv_accuracy, _cv_accuracy_sklearn, _encode, probe_attributes

N, LAYERS, D, FOLDS = 240, 6, 64, 5
CLASSES = {"colour": 6, "shape": 4, "position": 9, "size": 3}


def problem(seed: int = 0) -> tuple[np.ndarray, dict[str, list[int]]]:
    rng = np.random.default_rng(seed)
    states = rng.normal(size=(N, LAYERS, D))
    labels = {}
    for name, k in CLASSES.items():
        y = rng.integers(0, k, N)
        states += np.linspace(0, 1.5, LAYERS)[None, :, None] * rng.normal(size=(k, 1, D))[y]
        labels[name] = y.tolist()
    return states, labels


def tasks(labels: dict[str, list[int]]) -> list:
    """Each attribute's task and control task on its folds (the splits `probe_attributes` makes)."""
    probe = LayerProbe(cv=FOLDS)
    return [t for values in labels.values() for t in probe._tasks(np.arange(N), _encode(values)[0], np.arange(N), None)]


def sklearn_loop(states: np.ndarray, labels: dict[str, list[int]]) -> list[np.ndarray]:
    """Mean accuracy [layers] of each task, one scikit-learn fit per layer x fold x target (splits included)."""
    return [a.mean(axis=1) for a in _cv_accuracy_sklearn(states, tasks(labels), 1.0, 200)]


def batched(states: np.ndarray, labels: dict[str, list[int]]) -> list[np.ndarray]:
    return [r[key] for r in probe_attributes(states, labels, cv=FOLDS).values() for key in ("accuracy", "control")]


def best_of(repeats: int, fn, *args) -> tuple[float, float, object]:
    """The fastest wall and CPU (this process) times of `repeats` calls, and the result."""
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        result = fn(*args)
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return min(wall), min(cpu), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="time each this many times, keep the fastest")
    args = parser.parse_args()
    states, labels = problem()
    batched(states, labels)  # warm-up: torch's first call
    prepared = tasks(labels)
    rows = {
        "end to end": (best_of(args.repeats, sklearn_loop, states, labels),
                       best_of(args.repeats, batched, states, labels)),
        "fits only": (best_of(args.repeats, _cv_accuracy_sklearn, states, prepared, 1.0, 200),
                      best_of(args.repeats, _cv_accuracy, states, prepared, 1.0, 200)),
    }
    print(f"{len(CLASSES) * 2 * FOLDS * LAYERS} probes (N={N}, {LAYERS} layers, d={D}, {len(CLASSES)} attributes, "
          f"{FOLDS} folds, with controls), best of {args.repeats}, {torch.get_num_threads()} torch thread(s)")
    print(f"  {'':<11} {'scikit-learn loop':>22} {'batched':>20} {'ratio (wall, CPU)':>20}")
    for name, ((sk_wall, sk_cpu, _), (b_wall, b_cpu, _)) in rows.items():
        print(f"  {name:<11} {sk_wall:>7.2f} s wall {sk_cpu:5.2f} s CPU {b_wall:>5.2f} s wall {b_cpu:5.2f} s CPU "
              f"{sk_wall / b_wall:>8.1f}x {sk_cpu / b_cpu:5.1f}x")
    (_, _, sk), (_, _, b) = rows["end to end"]
    diff = max(np.abs(s - t).max() for s, t in zip(sk, b))
    print(f"  largest difference in mean accuracy (task or control, any attribute and layer): {diff:.4f}")


if __name__ == "__main__":
    main()
