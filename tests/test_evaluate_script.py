"""``scripts/evaluate.py``: a saved mechanism evaluated from the command line."""

import subprocess
import sys
from pathlib import Path

import pytest

from dmd_torch import AMA, make_env, save_mechanism
from dmd_torch.results import read_result

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "evaluate.py"


def _run(*overrides, cwd):
    return subprocess.run([sys.executable, str(SCRIPT), *overrides], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_evaluates_saved_mechanism(tmp_path):
    env = make_env("seq_sales", n_agents=2, size=2)
    save_mechanism(AMA.known_optimum(env), tmp_path / "run")
    out = tmp_path / "eval.json"
    proc = _run(f"mechanism={tmp_path / 'run' / 'mechanism.pt'}", "profiles=3000", "seed=4", f"out={out}", "audit_profiles=40", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    result = read_result(out)  # the one schema of results.json
    ev, audit = result.evaluation, result.audit
    assert result.training is None and result.setting == "seq_sales_sym" and result.env == env.config()
    assert ev.profiles == 3000 and ev.seed == 4 and ev.objective == "revenue"
    assert ev.optimality_ratio == pytest.approx(1.0) and audit.max_ic_gain < 1e-9 and audit.misreports > 0
    assert abs(ev.mean - 0.5) < 4 * ev.stderr  # Myerson revenue, 2 bidders, 2 items
    assert "VCG" in proc.stdout and not list(tmp_path.glob("outputs"))


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["mechanism=missing.json"], "error: no mechanism file at"),
        (["mechanism=run", "profiles=0"], "error: profiles must be an integer >= 2, got 0"),
        (["mechanism=run", "audit_profiles=1"], "error: audit_profiles must be an integer >= 2, got 1"),
    ],
)
def test_bad_input_is_one_line(tmp_path, overrides, message):
    save_mechanism(AMA(make_env("seq_sales", n_agents=2, size=2)), tmp_path / "run")
    proc = _run(*overrides, cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and proc.stderr.startswith(message)
