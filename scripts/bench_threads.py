"""Benchmark of the exact solvers' thread policy (:mod:`dmd_torch.runtime`), side by side in one run.

For one cell of each setting, :func:`dmd_torch.evaluate` of ``--profiles`` profiles with the
library's policy (one thread for batches within ``MAX_BATCH_ELEMENTS``) against torch's default
thread count (``set_exact_threads(None)``), alternating ``--repeats`` times; prints the medians and
the median of the per-round ratios, and checks that the caller's thread count is given back.

Usage: ``python scripts/bench_threads.py [--profiles 10000] [--repeats 3]``
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from dmd_torch import AMA, make_env
from dmd_torch.evaluation import evaluate
from dmd_torch.runtime import set_exact_threads

CELLS = [("seq_sales", 5, 3), ("scheduling", 3, 5), ("gridworld", 5, 4)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    threads = torch.get_num_threads()
    print(f"torch's default thread count here: {threads}")
    for name, n, m in CELLS:
        ama = AMA(make_env(name, n_agents=n, size=m))
        evaluate(ama, 1000)  # lazy imports, first touch
        times: dict[str, list[float]] = {"policy": [], "default": []}
        for _ in range(args.repeats):
            for key, policy in (("policy", 1), ("default", None)):
                set_exact_threads(policy)
                t = time.perf_counter()
                evaluate(ama, args.profiles)
                times[key].append(time.perf_counter() - t)
        set_exact_threads(1)
        assert torch.get_num_threads() == threads, "the caller's thread count was not given back"
        ratio = statistics.median(d / p for d, p in zip(times["default"], times["policy"]))
        print(f"{name} {n}x{m}: policy (1 thread) {statistics.median(times['policy']):.2f} s, "
              f"torch default ({threads} threads) {statistics.median(times['default']):.2f} s, ratio {ratio:.1f}x")


if __name__ == "__main__":
    main()
