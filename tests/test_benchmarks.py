"""The benchmark scripts run to the end on tiny budgets (their figures are in docs/benchmarks.md)."""

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def _run(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPTS / script), *args], capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("script, args, expect", [
    ("bench_exact.py", ["--profiles", "200", "--lp-profiles", "2", "--repeats", "1"],
     ["seq_sales symmetric n=5 m=3", "all 32 cells", "gridworld n=5 m=4", "seq_sales asymmetric n=5 m=3"]),
    ("bench_regularized.py", ["--repeats", "1", "--profiles", "2", "--cells", "seq_sales:2:2", "--skip-cvxpylayers"],
     ["seq_sales    2    2"]),
    ("bench_threads.py", ["--profiles", "200", "--repeats", "1"], ["seq_sales 5x3", "gridworld 5x4"]),
    ("bench_scaling.py", ["--quick", "--settings", "seq_sales", "--sizes", "2x2", "--profiles", "200", "--probe", "50"],
     ["measuring on cpu", "| seq_sales | 2 | 2 | 4 | 3 | 36 |", "seq_sales: eval"]),
], ids=["exact", "regularized", "threads", "scaling"])
def test_benchmark_runs(script, args, expect):
    proc = _run(script, *args)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for text in expect:
        assert text in proc.stdout, (text, proc.stdout[-2000:])


@pytest.mark.parametrize("script", ["bench_exact.py", "bench_scaling.py"])
def test_benchmark_refuses_unknown_device(script):
    proc = _run(script, "--device", "tpu")
    assert proc.returncode == 2
    assert "--device 'tpu'" in proc.stderr and "allowed: cpu" in proc.stderr
